import Foundation
import NIOHTTP1
import TestSupport
import Testing

/// `make run-all` as a user runs it: both services with the shipped demo configuration, the demo
/// records collected and the watermarks set, then Ctrl-C stops both.
@Suite("make run-all", .serialized, .timeLimit(.minutes(3)))
struct RunAllTests {
    @Test("the demo is collected, watermarks are set, and an interrupt stops both services")
    func demo() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let storagePort = try freePort()
        let collectionPort = try freePort()
        let script = try ServiceProcess(
            "/bin/bash",
            arguments: [repositoryRoot.appendingPathComponent("scripts/run-all.sh").path],
            environment: [
                "BIN_DIR": ServiceProcess.binDirectory.path,
                "STORAGE_PORT": "\(storagePort)", "COLLECTION_PORT": "\(collectionPort)",
                "DATABASE_PATH": dir.path + "/watermarks.db", "DATA_DIR": dir.path + "/collection",
            ]
        )
        let pidLine = try await script.waitForLine(containing: "pids: storage=")
        let pids = pidLine.split(separator: "=").dropFirst().compactMap { Int32($0.prefix { $0.isNumber }) }
        #expect(pids.count == 2)
        // Whatever happens below, no service outlives the test.
        defer { for pid in pids { kill(pid, SIGKILL) } }

        // The demo-feeds source runs at start: its watermark appears with every demo record counted.
        let storage = TestHTTP(baseURL: "http://127.0.0.1:\(storagePort)")
        let expectedRecords = try Self.demoRecordCount()
        let deadline = ContinuousClock.now + .seconds(60)
        var watermark: [String: Any] = [:]
        while ContinuousClock.now < deadline {
            if let reply = try? await storage.send(.GET, "/api/v1/watermarks/demo-feeds"), reply.status == 200 {
                watermark = try reply.json()
                break
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(watermark["status"] as? String == "success", "\(script.log)")
        #expect(watermark["records_collected"] as? Int == expectedRecords)
        #expect(watermark["last_successful_timestamp"] as? String == "2026-11-26T17:05:31Z")

        // Every demo record is in the sink exactly once.
        let sink = URL(fileURLWithPath: dir.path + "/collection/demo-feeds")
        let lines = try FileManager.default.contentsOfDirectory(at: sink, includingPropertiesForKeys: nil)
            .filter { $0.pathExtension == "ndjson" }
            .flatMap { try String(contentsOf: $0, encoding: .utf8).split(separator: "\n") }
        #expect(lines.count == expectedRecords)

        let collection = TestHTTP(baseURL: "http://127.0.0.1:\(collectionPort)")
        #expect(try await collection.send(.GET, "/status").status == 200)

        // What run-all points to works offline: the web view shows both demo sources, and the printed
        // watermarkctl command lists the demo's watermark.
        #expect(script.log.contains("Web view           http://127.0.0.1:\(collectionPort)/"), "\(script.log)")
        let page = try await collection.send(.GET, "/")
        #expect(page.status == 200 && page.text.contains(#"id="source-demo-feeds""#))
        #expect(page.text.contains(#"id="source-demo-inbox""#))
        let printed = try #require(
            script.log.split(separator: "\n").first { $0.contains("watermarkctl list") }, "\(script.log)")
        let command = String(printed.prefix { $0 != "#" }).trimmingCharacters(in: .whitespaces)
        let listed = try runToEnd(["/bin/sh", "-c", command + " 2>&1"])
        #expect(listed.status == 0 && listed.output.contains("demo-feeds"), "\(command): \(listed.output)")

        // Ctrl-C: the script stops both services and exits.
        let status = try await script.stop(signal: SIGINT, timeout: .seconds(30))
        #expect(status == 0, "Ctrl-C is the normal end of run-all: \(script.log)")
        #expect(script.log.contains("run-all: stopped"))
        for pid in pids {
            #expect(kill(pid, 0) != 0, "process \(pid) is still running")
        }
        #expect(script.log.contains("Storage service stopped"))
    }

    /// Records shipped in demo/feeds: objects of the STIX bundle plus lines of the NDJSON file.
    static func demoRecordCount() throws -> Int {
        let feeds = repositoryRoot.appendingPathComponent("demo/feeds")
        var count = 0
        for file in try FileManager.default.contentsOfDirectory(at: feeds, includingPropertiesForKeys: nil) {
            let data = try Data(contentsOf: file)
            switch file.pathExtension {
            case "ndjson":
                count +=
                    String(decoding: data, as: UTF8.self).split(separator: "\n").filter {
                        !$0.allSatisfy(\.isWhitespace)
                    }.count
            case "json":
                let object = try JSONSerialization.jsonObject(with: data)
                if let bundle = object as? [String: Any], let objects = bundle["objects"] as? [Any] {
                    count += objects.count
                } else if let array = object as? [Any] {
                    count += array.count
                } else {
                    count += 1
                }
            default:
                continue
            }
        }
        return count
    }
}
