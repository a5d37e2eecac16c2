import Foundation
import NIOHTTP1
import Testing

/// `collection-service` as a process against the real Storage Service and a real TAXII 2.1 server (OASIS
/// medallion, installed from PyPI by `scripts/medallion/start.sh`). Without PyPI these fail, loudly.
@Suite("Collection service with medallion and storage", .serialized, .timeLimit(.minutes(10)))
struct CollectionIntegrationTests {
    /// A port taken between `freePort()` and medallion's bind (another test's process, in parallel) makes
    /// medallion exit with "Address already in use": the harness starts it again on another port.
    @Test func medallionStartsAgainOnAnotherPortWhenItsPortWasTaken() async throws {
        let taken = try ListeningSocket()
        defer { taken.release() }
        var offered: [Int] = []
        let medallion = try await MedallionServer(ports: {
            offered.append(offered.isEmpty ? taken.port : try freePort())
            return offered.last!
        })
        #expect(offered.count == 2 && offered[0] == taken.port)
        #expect(medallion.port == offered[1])
        #expect(try await medallion.manifest().isEmpty)
        await medallion.stop()
    }

    /// `--once` stopped by SIGTERM (a CronJob past its deadline, a `timeout` wrapper) ends its run at the next page
    /// boundary, here while it waits for a source that never answers, and releases the lease: it died at once with
    /// the lease held for its TTL (twice the source's timeout, up to a day), and the next job skipped the source.
    @Test func onceStoppedBySIGTERMReleasesItsLease() async throws {
        let blackHole = try ListeningSocket()
        defer { blackHole.release() }
        let setup = try CollectionSetup(
            sourcesJSON: """
                {"sources": [{"id": "stuck", "type": "taxii21", "api_root": "http://127.0.0.1:\(blackHole.port)/api1/",
                  "collection_id": "c", "timeout_seconds": 600}]}
                """)
        defer { setup.remove() }
        try await withStorageService { storage in
            let process = try setup.startOnce(storageURL: "http://127.0.0.1:\(storage.port)")
            defer { process.signal(SIGKILL) }
            try await waitUntil("the run to hold its lease", timeout: .seconds(30), every: .milliseconds(100)) {
                try await storage.http.send(.GET, "/api/v1/watermarks/stuck/lease").status == 200
            }
            process.signal(SIGTERM)
            let status = try await process.waitForExit(timeout: .seconds(30))
            #expect(status == 1, "\(process.log)")
            #expect(process.log.contains("stopping: runs end at their next page"), "\(process.log)")
            let lease = try await storage.http.send(.GET, "/api/v1/watermarks/stuck/lease")
            #expect(lease.status == 404, "the lease is still held: \(lease.text)")
        }
    }

    /// Collect, add objects with a POST, collect again: only the new ones arrive; a third run finds nothing
    /// and still records a success with the mark unchanged.
    @Test func incrementalCycle() async throws {
        let medallion = try await MedallionServer()
        let setup = try CollectionSetup(sourcesJSON: taxiiSourcesJSON(medallion, pageSize: 2))
        defer { setup.remove() }
        do {
            try await withStorageService { storage in
                let url = "http://127.0.0.1:\(storage.port)"
                try await medallion.add((1...3).map { indicator($0) })

                let first = try await setup.runOnce(storageURL: url)
                #expect(first.status == 0, "\(first.log)")
                #expect(first.log.contains("medallion success records=3"), "\(first.log)")
                #expect(try setup.sinkIDs("medallion").count == 3)
                let mark1 = try await storage.http.send(.GET, "/api/v1/watermarks/medallion").json()
                #expect(mark1["status"] as? String == "success")
                #expect(mark1["records_collected"] as? Int == 3)

                try await medallion.add((4...8).map { indicator($0) })
                let second = try await setup.runOnce(storageURL: url)
                #expect(second.status == 0, "\(second.log)")
                #expect(second.log.contains("medallion success records=5"), "\(second.log)")
                let ids = try setup.sinkIDs("medallion")
                #expect(ids.count == 8 && Set(ids).count == 8)
                let mark2 = try await storage.http.send(.GET, "/api/v1/watermarks/medallion").json()
                let first2 = try #require(mark1["last_successful_timestamp"] as? String)
                let second2 = try #require(mark2["last_successful_timestamp"] as? String)
                #expect(second2 > first2)

                let third = try await setup.runOnce(storageURL: url)
                #expect(third.status == 0 && third.log.contains("medallion success records=0"), "\(third.log)")
                let mark3 = try await storage.http.send(.GET, "/api/v1/watermarks/medallion").json()
                #expect(mark3["last_successful_timestamp"] as? String == second2)
                #expect(mark3["version"] as? Int == 3)
                #expect(try setup.sinkIDs("medallion").count == 8)
            }
        } catch {
            await medallion.stop()
            throw error
        }
        await medallion.stop()
    }

    /// SIGKILL `collection-service` at arbitrary instants of runs that page one object at a time, with new
    /// objects arriving between runs; a final complete run leaves every object in the sink exactly once.
    @Test func crashMidRunThenExactlyOnce() async throws {
        let medallion = try await MedallionServer()
        let setup = try CollectionSetup(sourcesJSON: taxiiSourcesJSON(medallion, pageSize: 1))
        defer { setup.remove() }
        do {
            try await withStorageService { storage in
                let url = "http://127.0.0.1:\(storage.port)"
                var next = 1
                var killed = 0
                var killedMidPaging = 0
                for round in 0..<6 {
                    try await medallion.add((next..<(next + 6)).map { indicator($0) })
                    next += 6
                    let before = try setup.sinkIDs("medallion").count
                    let process = try setup.startOnce(storageURL: url)
                    if round.isMultiple(of: 2) {
                        // Kill the moment the first page of this run is on disk: in the middle of paging.
                        try? await waitUntil("a page on disk", timeout: .seconds(20), every: .milliseconds(1)) {
                            try setup.sinkIDs("medallion").count > before || !process.isRunning
                        }
                    } else {
                        // Kill at a different instant each round: during start-up, paging or the update.
                        try await Task.sleep(for: .milliseconds(100 + 100 * round))
                    }
                    if process.isRunning {
                        process.signal(SIGKILL)
                        killed += 1
                        _ = try await process.waitForExit(timeout: .seconds(30))
                        if try setup.sinkIDs("medallion").count < next - 1 { killedMidPaging += 1 }
                    } else {
                        _ = try await process.waitForExit(timeout: .seconds(30))
                    }
                }
                #expect(killedMidPaging >= 1, "no run was killed in the middle of paging (killed \(killed))")
                let final = try await setup.runOnce(storageURL: url)
                #expect(final.status == 0, "\(final.log)")
                let ids = try setup.sinkIDs("medallion")
                let expected = Set((1..<next).map { indicator($0)["id"] as! String })
                #expect(Set(ids) == expected)
                #expect(ids.count == expected.count, "duplicates: \(ids.count - Set(ids).count); killed \(killed) runs")
                // And once more: nothing new, nothing twice.
                let again = try await setup.runOnce(storageURL: url)
                #expect(again.log.contains("medallion success records=0"), "\(again.log)")
                #expect(try setup.sinkIDs("medallion").count == expected.count)
            }
        } catch {
            await medallion.stop()
            throw error
        }
        await medallion.stop()
    }

    /// Storage down: the start-up warning, collection goes on from the local state, the update is queued on
    /// disk; once storage is back the queue is replayed and nothing was collected twice.
    @Test func storageOutageQueuesAndReplays() async throws {
        let medallion = try await MedallionServer()
        let setup = try CollectionSetup(sourcesJSON: taxiiSourcesJSON(medallion, pageSize: 2))
        defer { setup.remove() }
        do {
            try await withStorageService { storage in
                try await medallion.add((1...2).map { indicator($0) })
                let online = try await setup.runOnce(storageURL: "http://127.0.0.1:\(storage.port)")
                #expect(online.status == 0, "\(online.log)")
                let before = try await storage.http.send(.GET, "/api/v1/watermarks/medallion").json()

                try await storage.service.stop()
                try await medallion.add((3...5).map { indicator($0) })
                let downURL = "http://127.0.0.1:\(storage.port)"
                let offline = try await setup.runOnce(storageURL: downURL)
                #expect(offline.status == 0, "\(offline.log)")
                #expect(offline.log.contains("Storage Service health check failed - watermarks will not persist"))
                #expect(offline.log.contains("medallion success records=3"), "\(offline.log)")
                #expect(offline.log.contains("update=queued"), "\(offline.log)")
                let pending = try String(contentsOfFile: setup.dataPath + "/.state/pending.json", encoding: .utf8)
                #expect(pending.contains("medallion"))

                // Still down: continues from the local mark, nothing new, nothing twice.
                let stillDown = try await setup.runOnce(storageURL: downURL)
                #expect(stillDown.log.contains("medallion success records=0"), "\(stillDown.log)")
                #expect(try setup.sinkIDs("medallion").count == 5)

                try await storage.restart()
                let back = try await setup.runOnce(storageURL: "http://127.0.0.1:\(storage.port)")
                #expect(back.status == 0, "\(back.log)")
                let after = try await storage.http.send(.GET, "/api/v1/watermarks/medallion").json()
                let beforeMark = try #require(before["last_successful_timestamp"] as? String)
                let afterMark = try #require(after["last_successful_timestamp"] as? String)
                #expect(afterMark > beforeMark)
                let history = try await storage.http.send(.GET, "/api/v1/watermarks/medallion/history").json()
                let runs = try #require(history["runs"] as? [[String: Any]])
                #expect(runs.count >= 3, "the queued updates were replayed: \(runs)")
                #expect(runs.contains { $0["records_collected"] as? Int == 3 })
                let ids = try setup.sinkIDs("medallion")
                #expect(ids.count == 5 && Set(ids).count == 5)
            }
        } catch {
            await medallion.stop()
            throw error
        }
        await medallion.stop()
    }

    /// The serving process: `/health`, `/status`, a manual run, the healthcheck sub-command, and SIGTERM
    /// exits 0.
    @Test func servesStatusAndStopsCleanly() async throws {
        let setup = try CollectionSetup(
            sourcesJSON: """
                {"sources": [{"id": "drop", "type": "directory", "path": "PLACEHOLDER", "interval_seconds": 3600}]}
                """)
        defer { setup.remove() }
        let drop = try CollectionSetup.dropFolder("drop", in: setup, extra: #""interval_seconds": 3600"#)
        let now = ISO8601DateFormatter().string(from: Date())
        try "{\"id\":\"r1\",\"modified\":\"\(now)\"}\n".write(
            toFile: drop + "/a.ndjson", atomically: true, encoding: .utf8)

        let binary = ServiceProcess.binDirectory.appendingPathComponent("collection-service")
        let service = try ServiceProcess(
            binary.path,
            environment: setup.environment(storageURL: nil)
        )
        try await waitUntil("the service to listen", timeout: .seconds(30)) {
            service.log.contains("Collection service listening")
        }
        let line = try #require(
            service.log.split(separator: "\n").first { $0.contains("Collection service listening") })
        let port = try #require(
            line.range(of: "port=").map { Int(line[$0.upperBound...].prefix { $0.isNumber }) } ?? nil)
        let http = TestHTTP(baseURL: "http://127.0.0.1:\(port)")
        try await waitUntil("the first run", timeout: .seconds(30)) { try setup.sinkIDs("drop") == ["r1"] }

        let health = try await http.send(.GET, "/health")
        #expect(health.status == 200 && health.text == #"{"status":"healthy"}"#)
        #if canImport(Glibc)
            // A request that is not HTTP/1.1 gets the contract's JSON error, as on the storage service.
            let unparsable = try RawSocket.answersToUnparsableRequest(port: port, path: "/health")
            #expect(unparsable.statuses == [200, 400] && unparsable.closed, "\(unparsable)")
            #expect(unparsable.errorCode == "malformed_request" && unparsable.contentType == "application/json")
        #endif
        try "{\"id\":\"r2\",\"modified\":\"\(ISO8601DateFormatter().string(from: Date()))\"}\n".write(
            toFile: drop + "/b.ndjson", atomically: true, encoding: .utf8)
        // The first run's record is on disk before the run ends (its mark, its lease): a manual run asked for
        // meanwhile is rightly 409. Once the source is idle, it is started.
        try await waitUntil("the first run to end", timeout: .seconds(30)) {
            let status = try await http.send(.GET, "/status").json()
            let source = (status["sources"] as? [[String: Any]])?.first
            return source?["running"] as? Bool == false && source?["last_run"] is [String: Any]
        }
        let run = try await http.send(.POST, "/api/v1/sources/drop/run")
        #expect(run.status == 202)
        try await waitUntil("the manual run", timeout: .seconds(30)) { try setup.sinkIDs("drop") == ["r1", "r2"] }
        let status = try await http.send(.GET, "/status").json()
        let source = try #require((status["sources"] as? [[String: Any]])?.first)
        #expect(source["source_id"] as? String == "drop" && source["last_error"] is NSNull)
        #expect((try await http.send(.POST, "/api/v1/sources/unknown/run")).status == 404)

        let probe = try ServiceProcess(
            binary.path,
            arguments: ["healthcheck", "--url", "http://127.0.0.1:\(port)/health"],
            environment: [:]
        )
        #expect(try await probe.waitForExit(timeout: .seconds(20)) == 0)

        service.signal(SIGTERM)
        #expect(try await service.waitForExit(timeout: .seconds(20)) == 0, "\(service.log)")

        let down = try ServiceProcess(
            binary.path,
            arguments: ["healthcheck", "--url", "http://127.0.0.1:\(port)/health"],
            environment: [:]
        )
        #expect(try await down.waitForExit(timeout: .seconds(20)) == 1)
    }

    /// `--once` with one broken source: the others still run, the broken one records `failed` with a message
    /// saying what happened, its watermark does not move, and the exit status is non-zero.
    @Test func onceExitsNonZeroWhenASourceFailsAndOthersCarryOn() async throws {
        let deadPort = try freePort()
        let setup = try CollectionSetup(sourcesJSON: "{}")
        defer { setup.remove() }
        let drop = setup.directory.path + "/drop"
        try FileManager.default.createDirectory(atPath: drop, withIntermediateDirectories: true)
        let now = ISO8601DateFormatter().string(from: Date())
        try "{\"id\":\"r1\",\"modified\":\"\(now)\"}\n".write(
            toFile: drop + "/a.ndjson", atomically: true, encoding: .utf8)
        try """
        {"sources": [
          {"id": "broken", "type": "taxii21", "api_root": "http://127.0.0.1:\(deadPort)/api1/",
           "collection_id": "c", "timeout_seconds": 2},
          {"id": "drop", "type": "directory", "path": "\(drop)"}
        ]}
        """.write(toFile: setup.sourcesPath, atomically: true, encoding: .utf8)
        try await withStorageService { storage in
            let result = try await setup.runOnce(storageURL: "http://127.0.0.1:\(storage.port)")
            #expect(result.status == 1, "\(result.log)")
            #expect(result.log.contains("drop success records=1"), "\(result.log)")
            #expect(result.log.contains("broken failed records=0"), "\(result.log)")
            let broken = try await storage.http.send(.GET, "/api/v1/watermarks/broken").json()
            #expect(broken["status"] as? String == "failed")
            #expect(broken["last_successful_timestamp"] is NSNull)
            let message = try #require(broken["error_message"] as? String)
            #expect(message.contains("127.0.0.1:\(deadPort)/api1/collections/c/objects/"), "\(message)")
            #expect(try setup.sinkIDs("drop") == ["r1"])
        }
    }

    /// A configuration error names the source and field and exits non-zero before doing anything.
    @Test func configurationErrorsStopTheStart() async throws {
        let setup = try CollectionSetup(
            sourcesJSON: """
                {"sources": [{"id": "otx", "type": "otx", "api_key_env": "SURELY_NOT_SET_OTX_KEY"}]}
                """)
        defer { setup.remove() }
        let result = try await setup.runOnce(storageURL: nil)
        #expect(result.status == 2)
        #expect(
            result.log.contains(
                #"source "otx" field "api_key_env": environment variable SURELY_NOT_SET_OTX_KEY is not set"#))
    }
}
