import Foundation
import NIOHTTP1
import TestSupport

/// A `storage-service` process on 127.0.0.1 with a temporary database, for the reliability tests.
///
/// `start()` returns once the service listens; the database folder outlives restarts (`restart()`), so
/// tests can kill and start the service again on the same file. `finish()` stops the process and removes
/// the folder; the `ServiceProcess` deinit kills a process a failing test left running.
final class StorageServiceHarness {
    let directory: TemporaryDirectory
    let environment: [String: String]
    private(set) var service: ServiceProcess
    private(set) var http: TestHTTP
    /// Every process log of this harness, the current one last, for tests that grep the logs.
    private(set) var previousLogs: [String] = []

    var databasePath: String { directory.path + "/watermarks.db" }
    var port: Int
    var allLogs: String { (previousLogs + [service.log]).joined(separator: "\n") }

    init(environment extra: [String: String] = [:], headers: [(String, String)] = []) async throws {
        directory = try TemporaryDirectory()
        var environment = ["PORT": "0", "HOST": "127.0.0.1", "DATABASE_PATH": directory.path + "/watermarks.db"]
        environment.merge(extra) { $1 }
        self.environment = environment
        do {
            service = try ServiceProcess("storage-service", environment: environment)
            port = try await service.waitForPort(marker: "Storage service listening")
        } catch {
            directory.remove()
            throw error
        }
        http = TestHTTP(baseURL: "http://127.0.0.1:\(port)", headers: headers)
    }

    /// Starts a new process on the same database (after a kill or stop).
    func restart() async throws {
        if service.isRunning { try await service.stop(signal: SIGKILL) }
        previousLogs.append(service.log)
        service = try ServiceProcess("storage-service", environment: environment)
        port = try await service.waitForPort(marker: "Storage service listening")
        http = TestHTTP(baseURL: "http://127.0.0.1:\(port)", headers: http.headers)
    }

    /// Stops the service (SIGTERM, SIGKILL after the timeout) and removes the folder.
    func finish() async {
        if service.isRunning { _ = try? await service.stop() }
        directory.remove()
    }
}

/// `PRAGMA integrity_check` of a SQLite file, run with python3's sqlite3 module (the test target has
/// no GRDB): "ok" for a sound database.
func sqliteIntegrityCheck(_ path: String) throws -> String {
    let (status, output) = try runToEnd([
        "python3", "-c",
        "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('PRAGMA integrity_check').fetchone()[0])",
        path,
    ])
    let text = output.trimmingCharacters(in: .whitespacesAndNewlines)
    guard status == 0 else { throw ProcessFailure("integrity check failed to run: \(text)") }
    return text
}

/// Waits until `condition` holds, polling, or throws after `timeout`.
func waitUntil(
    _ what: String, timeout: Duration = .seconds(10), every interval: Duration = .milliseconds(50),
    _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while true {
        if try await condition() { return }
        guard ContinuousClock.now < deadline else {
            throw ProcessFailure("timed out after \(timeout) waiting for \(what)")
        }
        try await Task.sleep(for: interval)
    }
}

/// Figures of a reliability run, appended as one JSON line to `RELIABILITY_REPORT` when that is set, so
/// RELIABILITY.md can quote the last run.
func reportFigures(_ test: String, _ figures: [String: Int]) {
    let line = figures.keys.sorted().map { "\($0)=\(figures[$0]!)" }.joined(separator: " ")
    print("reliability: \(test): \(line)")
    guard let path = ProcessInfo.processInfo.environment["RELIABILITY_REPORT"] else { return }
    var object: [String: Any] = ["test": test]
    for (key, value) in figures { object[key] = value }
    guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
    if !FileManager.default.fileExists(atPath: path) { FileManager.default.createFile(atPath: path, contents: nil) }
    guard let handle = FileHandle(forWritingAtPath: path) else { return }
    defer { try? handle.close() }
    _ = try? handle.seekToEnd()
    try? handle.write(contentsOf: data + Data("\n".utf8))
}

/// Runs `body` with a started harness and always cleans up: the process is stopped and the folder
/// removed, also when `body` throws.
func withStorageService<T>(
    environment: [String: String] = [:], headers: [(String, String)] = [],
    _ body: (StorageServiceHarness) async throws -> T
) async throws -> T {
    let harness = try await StorageServiceHarness(environment: environment, headers: headers)
    do {
        let result = try await body(harness)
        await harness.finish()
        return result
    } catch {
        await harness.finish()
        throw error
    }
}
