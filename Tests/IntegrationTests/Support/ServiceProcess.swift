import Foundation
import Synchronization

/// A real service executable started for a test, with its output captured.
///
/// Start it with `PORT=0` and the port it bound is read from its "listening" log line, so tests never
/// race for a free port. `stop()`/`kill()` end it; the deinit kills it too, so a failing test never
/// leaves a process behind.
final class ServiceProcess: Sendable {
    let name: String
    private let process: Process
    private let output = OutputBuffer()
    private let pipe: Pipe

    /// The folder holding the built executables: the test bundle's own folder, or `SERVICE_BIN_DIR`.
    static var binDirectory: URL {
        if let dir = ProcessInfo.processInfo.environment["SERVICE_BIN_DIR"] { return URL(fileURLWithPath: dir) }
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        // Linux: .../debug/<Package>PackageTests.xctest; macOS: .../debug/<Package>PackageTests.xctest/Contents/MacOS/...
        var dir = bundle.deletingLastPathComponent()
        while dir.path != "/",
            !FileManager.default.fileExists(atPath: dir.appendingPathComponent("storage-service").path)
        {
            dir = dir.deletingLastPathComponent()
        }
        return dir
    }

    /// Starts `executable` (a name in the bin folder, or an absolute path) with `environment` added to this process's environment.
    init(_ executable: String, arguments: [String] = [], environment: [String: String]) throws {
        name = executable
        process = Process()
        process.executableURL =
            executable.hasPrefix("/")
            ? URL(fileURLWithPath: executable) : Self.binDirectory.appendingPathComponent(executable)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for (key, value) in environment { env[key] = value }
        process.environment = env
        pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        let output = self.output
        pipe.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            guard !data.isEmpty else {
                handle.readabilityHandler = nil
                output.end()
                return
            }
            output.append(data)
        }
        // A child inherits the signal mask of the thread that spawns it, and the test runner's worker
        // threads block SIGINT and SIGTERM: a script would then never see the Ctrl-C a test sends it.
        var unblocked = sigset_t()
        var previous = sigset_t()
        sigemptyset(&unblocked)
        pthread_sigmask(SIG_SETMASK, &unblocked, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        try process.run()
    }

    deinit {
        // Killed, not waited for: Foundation reaps the child itself, and `waitUntilExit` off the main
        // thread can spin.
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        pipe.fileHandleForReading.readabilityHandler = nil
    }

    var log: String { output.text }
    var isRunning: Bool { process.isRunning }
    var pid: Int32 { process.processIdentifier }

    /// Waits until the log has a line containing `marker` and returns that line.
    @discardableResult
    func waitForLine(containing marker: String, timeout: Duration = .seconds(30)) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let line = log.split(separator: "\n").first(where: { $0.contains(marker) }) { return String(line) }
            if !process.isRunning {
                try await waitForOutputEnd()
                if let line = log.split(separator: "\n").first(where: { $0.contains(marker) }) { return String(line) }
                throw ProcessFailure(
                    "\(name) exited (\(process.terminationStatus)) before logging '\(marker)':\n\(log)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw ProcessFailure("\(name) did not log '\(marker)' within \(timeout):\n\(log)")
    }

    /// Waits for the "listening" line and returns the `port=` it names.
    func waitForPort(marker: String = "service listening", timeout: Duration = .seconds(30)) async throws -> Int {
        let line = try await waitForLine(containing: marker, timeout: timeout)
        guard let range = line.range(of: "port="),
            let port = Int(line[range.upperBound...].prefix { $0.isNumber })
        else { throw ProcessFailure("no port= in '\(line)'") }
        return port
    }

    /// Sends `signal` without waiting.
    func signal(_ signal: Int32) {
        if process.isRunning { kill(process.processIdentifier, signal) }
    }

    /// Sends `signal` and waits for the exit; returns the exit status.
    @discardableResult
    func stop(signal: Int32 = SIGTERM, timeout: Duration = .seconds(20)) async throws -> Int32 {
        if process.isRunning { kill(process.processIdentifier, signal) }
        return try await waitForExit(timeout: timeout)
    }

    func waitForExit(timeout: Duration = .seconds(20)) async throws -> Int32 {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            guard ContinuousClock.now < deadline else {
                kill(process.processIdentifier, SIGKILL)
                throw ProcessFailure("\(name) did not exit within \(timeout):\n\(log)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        try await waitForOutputEnd()
        return process.terminationStatus
    }

    /// Once the process has exited: waits until its output reached the end of the pipe, so that `log` holds every
    /// line it wrote (what a check that a line is absent needs), or until `timeout` when a child it started
    /// still holds the pipe open.
    private func waitForOutputEnd(timeout: Duration = .seconds(5)) async throws {
        let deadline = ContinuousClock.now + timeout
        while !output.ended, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
    }

    /// `true` when the process was ended by a signal rather than exiting.
    var wasSignalled: Bool { process.terminationReason == .uncaughtSignal }
}

struct ProcessFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A fresh temporary folder, removed by `remove()`.
struct TemporaryDirectory {
    let url: URL

    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("wm-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    var path: String { url.path }

    func remove() { try? FileManager.default.removeItem(at: url) }
}

/// Output collected from a process's pipe, appended from the pipe's reader thread.
final class OutputBuffer: Sendable {
    private let storage = Mutex((text: "", ended: false))

    func append(_ data: Data) {
        storage.withLock { $0.text += String(decoding: data, as: UTF8.self) }
    }

    /// The pipe reached its end: nothing more will be appended.
    func end() {
        storage.withLock { $0.ended = true }
    }

    var text: String { storage.withLock { $0.text } }
    var ended: Bool { storage.withLock { $0.ended } }
}

/// The repository root, from this file's path (tests run from the source tree).
let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// A TCP port on 127.0.0.1 that was free a moment ago, for programs that take a fixed port.
func freePort() throws -> Int {
    let (fd, port) = try boundSocket()
    close(fd)
    return port
}

/// A socket listening on a free port of 127.0.0.1 until `release()`: a port another program holds.
struct ListeningSocket {
    let port: Int
    private let fd: Int32

    init() throws {
        (fd, port) = try boundSocket()
        guard listen(fd, 1) == 0 else {
            close(fd)
            throw ProcessFailure("listen() failed")
        }
    }

    func release() { close(fd) }
}

/// A TCP socket bound to a port of 127.0.0.1 the system chose, and that port.
private func boundSocket() throws -> (Int32, Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw ProcessFailure("socket() failed") }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
            bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
        }
    }
    guard bound else {
        close(fd)
        throw ProcessFailure("cannot find a free port")
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}
