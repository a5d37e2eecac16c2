import Foundation
import InMemoryLogging
import Logging
import Synchronization
import Testing
import WatermarkCore

#if canImport(Glibc)
    import Glibc
#endif

/// What the test targets share: a clock moved by hand, literals for timestamps and source ids, and log
/// lines captured in memory (tests never bootstrap the logging system).

/// A clock the test moves by hand (lease expiry, staleness), shared by the code under test and the test.
package final class ManualClock: Sendable {
    private let current: Mutex<Timestamp>

    package init(_ start: Timestamp = Timestamp.now()) {
        current = Mutex(start)
    }

    package func now() -> Timestamp { current.withLock { $0 } }

    package func advance(_ duration: Duration) {
        current.withLock { $0 = $0.adding(duration) }
    }
}

extension Timestamp {
    /// A timestamp literal for tests.
    package static func at(_ text: String) -> Timestamp {
        do {
            return try Timestamp(rfc3339: text)
        } catch {
            fatalError("bad test timestamp \(text): \(error)")
        }
    }
}

/// A source id literal for tests.
package func sid(_ text: String) -> SourceID {
    do {
        return try SourceID(text)
    } catch {
        fatalError("bad test source id \(text)")
    }
}

extension Logger {
    /// A logger that drops everything, for tests that assert on answers, not on log output.
    package static let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
}

/// Log lines captured in memory (swift-log's `InMemoryLogHandler`), so a test can assert a message without
/// bootstrapping logging; entries are flattened to strings for easy comparison.
package final class LogRecorder: Sendable {
    package struct Entry: Sendable {
        package var level: Logger.Level
        package var message: String
        package var metadata: [String: String]
    }

    /// Copies of the handler share its entries.
    private let handler = InMemoryLogHandler()

    package init() {}

    package var all: [Entry] {
        handler.entries.map {
            .init(level: $0.level, message: "\($0.message)", metadata: $0.metadata.mapValues { "\($0)" })
        }
    }

    package func messages(at level: Logger.Level? = nil) -> [String] {
        all.filter { level == nil || $0.level == level }.map(\.message)
    }

    /// A logger whose lines land here.
    package func logger(_ label: String = "test", level: Logger.Level = .trace) -> Logger {
        var logger = Logger(label: label) { [handler] _ in handler }
        logger.logLevel = level
        return logger
    }
}

/// Runs a command (an absolute path, or a name looked up by `/usr/bin/env`) to its end: its exit status and its
/// standard output and error together. With `outputFile` the output goes to that file instead of a pipe (and is
/// read back from it) and the command is reaped with `waitpid`: for commands that leave a daemon behind, which
/// would hold a pipe open for ever. `currentDirectory`: where it runs (a command run as another user needs one that
/// user may enter, or it says so on standard error).
package func runToEnd(
    _ arguments: [String], environment: [String: String]? = nil, outputFile: String? = nil,
    currentDirectory: String? = nil
) throws -> (status: Int32, output: String) {
    let process = Process()
    if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
    if arguments[0].hasPrefix("/") {
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
    } else {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
    }
    if let environment { process.environment = environment }
    if let outputFile {
        FileManager.default.createFile(atPath: outputFile, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: outputFile))
        defer { try? handle.close() }
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        // Reaped here: Foundation learns of a child's exit when a socket the child inherited closes, and a
        // daemon the command leaves behind inherits that socket too, so `waitUntilExit` would wait for ever.
        var status: Int32 = 0
        while waitpid(process.processIdentifier, &status, 0) < 0, errno == EINTR {}
        let output = (try? String(contentsOfFile: outputFile, encoding: .utf8)) ?? ""
        let exited = (status & 0x7f) == 0
        return (exited ? (status >> 8) & 0xff : 128 + (status & 0x7f), output)
    }
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// A fresh folder under the system's temporary directory, removed after `body` (also when it throws).
package func withTemporaryDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
    let path = (NSTemporaryDirectory() as NSString).appendingPathComponent("watermark-tests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(path)
}

/// The error of type `E` that `body` threw; `nil` when it threw none (an error of another type is recorded as an
/// issue, and is `nil` too).
package func thrown<E: Error>(_ type: E.Type, _ body: () async throws -> Void) async -> E? {
    do {
        try await body()
        return nil
    } catch let error as E {
        return error
    } catch {
        Issue.record("expected \(E.self), got \(error)")
        return nil
    }
}

/// A TCP port that was free a moment ago (bound to port 0, then released).
package func freeTCPPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw PortFailure("socket() failed") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
    }
    guard bound == 0 else { throw PortFailure("bind() failed") }
    let named = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    guard named == 0 else { throw PortFailure("getsockname() failed") }
    return Int(UInt16(bigEndian: address.sin_port))
}

struct PortFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A small deterministic random generator (SplitMix64), so a failing run can be replayed by its seed.
package struct SeededRandom: RandomNumberGenerator {
    private var state: UInt64

    package init(seed: UInt64) { state = seed }

    package mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The seed from `variable` in the environment, or `fallback`.
    package static func seed(from variable: String, default fallback: UInt64) -> UInt64 {
        ProcessInfo.processInfo.environment[variable].flatMap(UInt64.init) ?? fallback
    }
}
