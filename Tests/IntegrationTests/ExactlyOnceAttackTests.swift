import Foundation
import NIOHTTP1
import Testing
import WatermarkCore

/// The product's promise, attacked with the real processes: `collection-service --once` is killed with SIGKILL
/// at seeded random moments while a producer adds and revises objects, and the storage is stopped twice; at the
/// end the sink holds every (id, version) the source holds exactly once, and the watermark is the source's
/// newest mark. `ATTACK_SEED` replays a run; the seed is printed with the figures.
@Suite("Exactly once under attack", .serialized, .timeLimit(.minutes(10)))
struct ExactlyOnceAttackTests {
    static let seed = SeededRandom.seed(from: "ATTACK_SEED", default: 20_261_202)

    /// The collector's environment: no INSTANCE_ID, so the default lease owner (the host name) is what a
    /// restarted process presents.
    static let collectorEnvironment = ["INSTANCE_ID": ""]

    static func normalised(_ version: String) -> String {
        (try? Timestamp(rfc3339: version).description) ?? version
    }

    /// TAXII 2.1 on medallion, every version of every object: objects are added and revised in POSTs (one
    /// `date_added` per POST, so pages end inside ties) before and during runs that are killed mid-paging,
    /// mid-checkpoint or mid-update, with two storage outages on the way.
    @Test func taxiiEveryVersionOnceThroughKillsAndStorageOutages() async throws {
        var random = SeededRandom(seed: Self.seed)
        let medallion = try await MedallionServer()
        let setup = try CollectionSetup(
            sourcesJSON: """
                {"sources": [{"id": "medallion", "type": "taxii21", "api_root": "\(medallion.apiRoot)",
                  "collection_id": "\(MedallionServer.collectionID)", "username_env": "TAXII_USERNAME",
                  "password_env": "TAXII_PASSWORD", "page_size": 2, "timeout_seconds": 10,
                  "checkpoint_pages": 1}]}
                """)
        defer { setup.remove() }
        let storagePort = try freePort()
        do {
            try await withStorageService(environment: ["PORT": "\(storagePort)"]) { storage in
                let url = "http://127.0.0.1:\(storagePort)"
                var revisions: [Int: Int] = [:]
                var nextNumber = 1
                /// One POST: new objects and new versions of existing ones, all with one date_added.
                func produce(new: Int = 2) async throws {
                    var objects: [[String: Any]] = []
                    for _ in 0..<new {
                        revisions[nextNumber] = 0
                        objects.append(indicator(nextNumber, modified: "2026-11-26T10:00:00.000Z"))
                        nextNumber += 1
                    }
                    for _ in 0..<2 where nextNumber > 3 {
                        let number = Int.random(in: 1..<(nextNumber - 2), using: &random)
                        revisions[number, default: 0] += 1
                        let minute = String(format: "%02d", revisions[number]!)
                        objects.append(indicator(number, modified: "2026-11-26T10:\(minute):00.000Z"))
                    }
                    try await medallion.add(objects)
                }

                var logs: [String] = []
                var kills = 0
                var killedAfterCheckpoint = 0
                var outages = 0
                let outageRounds: Set<Int> = [5, 11]
                // A backlog first: the early runs are long backfills, killed between their checkpoints. (Kept
                // small: medallion answers a first request in time that grows with the square of its versions.)
                for _ in 0..<2 { try await produce(new: 30) }
                // Rounds go on until at least 12 runs were killed (and both outages happened), 40 at most.
                var round = 0
                var runLength = 800  // ms, the wall time of the last run that ended by itself
                while round < 40, kills < 12 || round <= 11 {
                    defer { round += 1 }
                    try await produce()
                    let outage = outageRounds.contains(round)
                    if outage {
                        _ = try await storage.service.stop()
                        outages += 1
                    }
                    let started = ContinuousClock.now
                    let process = try setup.startOnce(storageURL: url, extra: Self.collectorEnvironment)
                    let delay = Int.random(in: 20...max(100, runLength), using: &random)
                    try await Task.sleep(for: .milliseconds(delay / 2))
                    try await produce()  // while the run pages
                    try await Task.sleep(for: .milliseconds(delay - delay / 2))
                    // During an outage the run goes to its end: its updates are queued for the next runs.
                    if process.isRunning && !outage {
                        process.signal(SIGKILL)
                        kills += 1
                        _ = try await process.waitForExit(timeout: .seconds(30))
                        if process.log.contains("checkpoint: watermark moved mid-run") { killedAfterCheckpoint += 1 }
                    } else {
                        _ = try await process.waitForExit(timeout: .seconds(90))
                        if !outage { runLength = Int((ContinuousClock.now - started).milliseconds) }
                    }
                    logs.append(process.log)
                    if outage { try await storage.restart() }
                }

                // The producer stops; one complete run collects the rest.
                let final = try setup.startOnce(storageURL: url, extra: Self.collectorEnvironment)
                let status = try await final.waitForExit(timeout: .seconds(120))
                logs.append(final.log)
                #expect(status == 0, "\(final.log)")

                let manifest = try await medallion.manifest()
                let expected = Set(manifest.map { $0.id + "@" + Self.normalised($0.version) })
                let keys = try setup.sinkKeys("medallion")
                let versions = revisions.values.reduce(revisions.count) { $0 + $1 }
                #expect(expected.count == versions, "the server holds every version the producer made")
                #expect(Set(keys) == expected, "missing: \(expected.subtracting(keys).sorted().prefix(5))")
                #expect(keys.count == expected.count, "duplicates: \(keys.count - Set(keys).count)")

                let newest = try #require(manifest.compactMap { try? Timestamp(rfc3339: $0.dateAdded) }.max())
                let mark = try await storage.http.send(.GET, "/api/v1/watermarks/medallion").json()
                let stored = try Timestamp(rfc3339: try #require(mark["last_successful_timestamp"] as? String))
                #expect(stored == newest, "the watermark is the server's newest date_added")

                let all = logs.joined(separator: "\n")
                #expect(kills >= 10, "only \(kills) runs were killed (seed \(Self.seed))")
                #expect(outages == 2)
                // A restarted collector is the same lease owner: never locked out of its own source.
                #expect(!all.contains("medallion skipped"), "a restarted collector was locked out: \(all)")
                // Queued updates were delivered, none refused or dropped.
                #expect(all.contains("watermark update queued"), "no update was queued during the outages")
                #expect(!all.contains("refused by storage") && !all.contains("dropped"))
                #expect(!FileManager.default.fileExists(atPath: setup.dataPath + "/.state/dead-letter.json"))
                let pending =
                    try JSONSerialization.jsonObject(
                        with: Data(contentsOf: URL(fileURLWithPath: setup.dataPath + "/.state/pending.json")))
                    as? [String: Any]
                #expect((pending?["updates"] as? [Any])?.isEmpty == true, "\(String(describing: pending))")
                #expect(all.contains("checkpoint: watermark moved mid-run"))
                reportFigures(
                    "taxiiEveryVersionOnceThroughKillsAndStorageOutages",
                    [
                        "seed": Int(Self.seed), "kills": kills, "killed_after_checkpoint": killedAfterCheckpoint,
                        "storage_outages": outages, "versions": expected.count, "objects": revisions.count,
                        "sink_lines": keys.count, "duplicates": keys.count - Set(keys).count,
                        "missing": expected.subtracting(keys).count,
                    ])
            }
        } catch {
            await medallion.stop()
            throw error
        }
        await medallion.stop()
    }

    /// A long backfill killed in its middle resumes from its last checkpoint: the next run re-reads at most what
    /// was written after it (two pages here), not the whole backfill.
    @Test func aKilledBackfillResumesFromItsLastCheckpoint() async throws {
        let medallion = try await MedallionServer()
        let setup = try CollectionSetup(
            sourcesJSON: """
                {"sources": [{"id": "medallion", "type": "taxii21", "api_root": "\(medallion.apiRoot)",
                  "collection_id": "\(MedallionServer.collectionID)", "username_env": "TAXII_USERNAME",
                  "password_env": "TAXII_PASSWORD", "page_size": 2, "timeout_seconds": 10,
                  "checkpoint_pages": 1, "overlap_seconds": 0}]}
                """)
        defer { setup.remove() }
        do {
            try await withStorageService { storage in
                let url = "http://127.0.0.1:\(storage.port)"
                let total = 120
                for number in 1...total { try await medallion.add([indicator(number)]) }  // one date_added each
                let process = try setup.startOnce(storageURL: url, extra: Self.collectorEnvironment)
                // Kill a third of the way in, a checkpoint being stored by then.
                try await waitUntil("a third of the backfill", timeout: .seconds(60), every: .milliseconds(2)) {
                    try setup.sinkIDs("medallion").count >= total / 3 || !process.isRunning
                }
                process.signal(SIGKILL)
                _ = try await process.waitForExit(timeout: .seconds(30))
                let written = try setup.sinkIDs("medallion").count
                try #require(written < total, "the backfill ended before it could be killed")
                let checkpoint = try await storage.http.send(.GET, "/api/v1/watermarks/medallion").json()
                #expect(checkpoint["status"] as? String == "success")

                let again = try setup.startOnce(storageURL: url, extra: Self.collectorEnvironment)
                let resumed = (status: try await again.waitForExit(timeout: .seconds(60)), log: again.log)
                #expect(resumed.status == 0, "\(resumed.log)")
                let line = try #require(
                    resumed.log.split(separator: "\n").first { $0.contains("collection run finished") })
                let duplicates = try #require(
                    line.range(of: "duplicates=").map { Int(line[$0.upperBound...].prefix { $0.isNumber }) } ?? nil)
                #expect(duplicates <= 4, "re-read \(duplicates) records of \(written) written before the kill")
                let ids = try setup.sinkIDs("medallion")
                #expect(ids.count == total && Set(ids).count == total)
                reportFigures(
                    "aKilledBackfillResumesFromItsLastCheckpoint",
                    [
                        "objects": total, "written_before_kill": written, "reread_after_restart": duplicates,
                    ])
            }
        } catch {
            await medallion.stop()
            throw error
        }
        await medallion.stop()
    }

    /// A drop folder: files land before and during runs, late files with old records, a record stamped in the
    /// future and an unreadable file among them; runs are killed at random moments and the storage goes away
    /// once. Every record of every readable file ends in the sink exactly once, the unreadable one is set
    /// aside, and the watermark is the newest record that is not in the future.
    @Test func dropFolderEveryRecordOnceThroughKillsLateFilesAndBadFiles() async throws {
        var random = SeededRandom(seed: Self.seed ^ 0x5DEE_CE66)
        let setup = try CollectionSetup(sourcesJSON: "{}")
        defer { setup.remove() }
        let inbox = setup.directory.path + "/inbox"
        try FileManager.default.createDirectory(atPath: inbox, withIntermediateDirectories: true)
        try #"{"sources": [{"id": "inbox", "type": "directory", "path": "\#(inbox)"}]}"#
            .write(toFile: setup.sourcesPath, atomically: true, encoding: .utf8)
        let storagePort = try freePort()
        let start = Timestamp.now()
        var expected: Set<String> = []
        var newestNotFuture = Timestamp(seconds: 0)
        var fileNumber = 0
        /// Writes a file under a hidden name and renames it in, as a producer should.
        func drop(_ records: [(id: String, time: Timestamp)], bundle: Bool = false) throws {
            fileNumber += 1
            let name = String(format: "f%03d", fileNumber) + (bundle ? ".json" : ".ndjson")
            let lines = records.map { #"{"id":"\#($0.id)","type":"indicator","modified":"\#($0.time)"}"# }
            let text =
                bundle
                ? #"{"type":"bundle","id":"bundle--\#(fileNumber)","objects":["# + lines.joined(separator: ",") + "]}"
                : lines.joined(separator: "\n") + "\n"
            try text.write(toFile: inbox + "/." + name, atomically: true, encoding: .utf8)
            try FileManager.default.moveItem(atPath: inbox + "/." + name, toPath: inbox + "/" + name)
            for record in records {
                expected.insert(record.id)
                if record.time <= Timestamp.now() { newestNotFuture = max(newestNotFuture, record.time) }
            }
        }
        func produce(round: Int, part: Int) throws {
            let count = Int.random(in: 50...400, using: &random)
            let base = Timestamp.now().adding(.seconds(-60))
            try drop((0..<count).map { ("r\(round)-\(part)-\($0)", base.adding(.milliseconds(Int64($0)))) })
            if round % 3 == 1 {  // a late file: records older than anything collected so far
                try drop(
                    (0..<20).map { ("late\(round)-\(part)-\($0)", start.adding(.seconds(-86_400 * 30))) }, bundle: true)
            }
        }

        try await withStorageService(environment: ["PORT": "\(storagePort)"]) { storage in
            let url = "http://127.0.0.1:\(storagePort)"
            var kills = 0
            var logs: [String] = []
            var round = 0
            var runLength = 300  // ms, the wall time of the last run that ended by itself
            while round < 40, kills < 12 || round <= 7 {
                defer { round += 1 }
                try produce(round: round, part: 0)
                if round == 2 { try drop([("future-1", Timestamp.now().adding(.seconds(2 * 86_400)))]) }
                if round == 5 {
                    try "{this is not JSON".write(toFile: inbox + "/f-bad.json", atomically: true, encoding: .utf8)
                }
                if round == 7 { _ = try await storage.service.stop() }
                let started = ContinuousClock.now
                let process = try setup.startOnce(storageURL: url, extra: Self.collectorEnvironment)
                let delay = Int.random(in: 20...max(100, runLength), using: &random)
                try await Task.sleep(for: .milliseconds(delay / 2))
                try produce(round: round, part: 1)  // while the run reads the folder
                try await Task.sleep(for: .milliseconds(delay - delay / 2))
                if process.isRunning {
                    process.signal(SIGKILL)
                    kills += 1
                    _ = try await process.waitForExit(timeout: .seconds(30))
                } else {
                    _ = try await process.waitForExit(timeout: .seconds(30))
                    runLength = Int((ContinuousClock.now - started).milliseconds)
                }
                logs.append(process.log)
                if round == 7 { try await storage.restart() }
            }
            let final = try setup.startOnce(storageURL: url, extra: Self.collectorEnvironment)
            let status = try await final.waitForExit(timeout: .seconds(120))
            logs.append(final.log)
            #expect(status == 0, "\(final.log)")

            let ids = try setup.sinkIDs("inbox")
            #expect(Set(ids) == expected, "missing: \(expected.subtracting(ids).sorted().prefix(5))")
            #expect(ids.count == expected.count, "duplicates: \(ids.count - Set(ids).count)")
            #expect(FileManager.default.fileExists(atPath: inbox + "/.rejected/f-bad.json"))
            let reason = try String(contentsOfFile: inbox + "/.rejected/f-bad.json.reason", encoding: .utf8)
            #expect(reason.contains("f-bad.json is not valid JSON"), "\(reason)")
            #expect(logs.joined().contains("file rejected: moved to the rejected folder"))

            let mark = try await storage.http.send(.GET, "/api/v1/watermarks/inbox").json()
            let stored = try Timestamp(rfc3339: try #require(mark["last_successful_timestamp"] as? String))
            #expect(stored == newestNotFuture, "the newest record that is not in the future")
            #expect(kills >= 10, "only \(kills) runs were killed (seed \(Self.seed))")
            reportFigures(
                "dropFolderEveryRecordOnceThroughKillsLateFilesAndBadFiles",
                [
                    "seed": Int(Self.seed), "kills": kills, "files": fileNumber, "records": expected.count,
                    "sink_lines": ids.count, "duplicates": ids.count - Set(ids).count,
                    "missing": expected.subtracting(ids).count,
                ])
        }
    }
}
