import Foundation
import NIOHTTP1
import TestSupport
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
        try await withMedallion { medallion in
            let setup = try CollectionSetup(
                sourcesJSON: taxiiSourcesJSON(medallion, pageSize: 2, extra: #""checkpoint_pages": 1"#))
            defer { setup.remove() }
            let storagePort = try freePort()
            try await withStorageService(environment: ["PORT": "\(storagePort)"]) { storage in
                var revisions: [Int: Int] = [:]
                var made: Set<String> = []  // id@version of every version the server acknowledged
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
                    for object in objects {
                        made.insert("\(object["id"]!)@\(Self.normalised(object["modified"] as! String))")
                    }
                }
                // A backlog first: the early runs are long backfills, killed between their checkpoints. (Kept
                // small: medallion answers a first request in time that grows with the square of its versions.)
                for _ in 0..<2 { try await produce(new: 30) }
                var attack = KillLoop(seed: Self.seed, storage: storage, setup: setup)
                try await attack.run(source: "medallion", outageRounds: [5, 11]) { _ in try await produce() }

                let manifest = try await medallion.manifest()
                let expected = Set(manifest.map { $0.id + "@" + Self.normalised($0.version) })
                let keys = try setup.sinkKeys("medallion")
                #expect(made.count == revisions.values.reduce(revisions.count) { $0 + $1 })
                #expect(
                    expected == made,
                    "the server holds every version it acknowledged: lost \(made.subtracting(expected).sorted())")
                #expect(Set(keys) == expected, "missing: \(expected.subtracting(keys).sorted().prefix(5))")
                #expect(keys.count == expected.count, "duplicates: \(keys.count - Set(keys).count)")
                let newest = try #require(manifest.compactMap { try? Timestamp(rfc3339: $0.dateAdded) }.max())
                #expect(try await attack.watermark("medallion") == newest, "the server's newest date_added")
                try attack.checkLeasesAndQueue(source: "medallion")
                #expect(attack.log.contains("checkpoint: watermark moved mid-run"))
                reportFigures(
                    "taxiiEveryVersionOnceThroughKillsAndStorageOutages",
                    attack.figures.merging([
                        "versions": expected.count, "objects": revisions.count, "sink_lines": keys.count,
                        "duplicates": keys.count - Set(keys).count, "missing": expected.subtracting(keys).count,
                    ]) { $1 })
            }
        }
    }

    /// AlienVault OTX (a stand-in server with OTX's API: `modified_since` inclusive, newest first, offset
    /// pages): pulses are published and revised before and during runs, some stamped days in the future; runs
    /// are killed at random moments and the storage is stopped twice. A future-dated pulse must never cost a
    /// later one: every pulse the server holds lands once, and the watermark is the newest `modified` that is
    /// not in the future.
    @Test func otxEveryPulseOnceWithFutureDatedPulsesThroughKillsAndStorageOutages() async throws {
        var random = SeededRandom(seed: Self.seed ^ 0x9015E)
        let otx = try await OTXStub()
        defer { otx.stop() }
        let setup = try CollectionSetup(
            sourcesJSON: """
                {"sources": [{"id": "otx", "type": "otx", "api_key_env": "OTX_API_KEY", "base_url": "\(otx.baseURL)",
                  "page_size": 2, "timeout_seconds": 10}]}
                """)
        defer { setup.remove() }
        let storagePort = try freePort()
        try await withStorageService(environment: ["PORT": "\(storagePort)"]) { storage in
            var current: [String: Timestamp] = [:]
            var number = 0
            /// Now, at OTX's precision (microseconds).
            func now(plus offset: Duration = .zero) -> Timestamp {
                try! Timestamp(rfc3339: Timestamp.now().adding(offset).formatted(fractionDigits: 6))
            }
            func produce(round: Int) async throws {
                var pulses: [(String, Timestamp)] = []
                for _ in 0..<3 {
                    number += 1
                    pulses.append(("pulse-\(number)", now()))
                }
                if number > 6 {  // a new version of a published pulse (OTX keeps only the newest)
                    let id = "pulse-\(Int.random(in: 1...(number - 3), using: &random))"
                    if current[id].map({ $0 <= now() }) ?? false { pulses.append((id, now())) }
                }
                if round % 4 == 1 {
                    number += 1
                    pulses.append(("pulse-\(number)", now(plus: .seconds(86_400 * 2))))
                }
                for (id, modified) in pulses { current[id] = modified }
                try await otx.publish(pulses)
            }
            var attack = KillLoop(seed: Self.seed, salt: 0x0A7C, storage: storage, setup: setup)
            attack.environment["OTX_API_KEY"] = OTXStub.apiKey
            try await attack.run(source: "otx", outageRounds: [4, 9]) { round in try await produce(round: round) }

            let expected = Set(current.map { $0.key + "@" + $0.value.description })
            let keys = try setup.sinkKeys("otx")
            #expect(expected.isSubset(of: Set(keys)), "missing: \(expected.subtracting(keys).sorted().prefix(5))")
            #expect(keys.count == Set(keys).count, "duplicates: \(keys.count - Set(keys).count)")
            let end = Timestamp.now()
            let newest = try #require(current.values.filter { $0 <= end }.max())
            #expect(try await attack.watermark("otx") == newest, "the newest modified that is not in the future")
            #expect(current.values.contains { $0 > end }, "future-dated pulses were published")
            try attack.checkLeasesAndQueue(source: "otx")
            reportFigures(
                "otxEveryPulseOnceWithFutureDatedPulsesThroughKillsAndStorageOutages",
                attack.figures.merging([
                    "pulses": current.count, "future_dated": current.values.count { $0 > end },
                    "sink_lines": keys.count, "duplicates": keys.count - Set(keys).count,
                    "missing": expected.subtracting(keys).count,
                ]) { $1 })
        }
    }

    /// A long backfill killed in its middle resumes from its last checkpoint: the next run re-reads at most what
    /// was written after it (two pages here), not the whole backfill.
    @Test func aKilledBackfillResumesFromItsLastCheckpoint() async throws {
        try await withMedallion { medallion in
            let setup = try CollectionSetup(
                sourcesJSON: taxiiSourcesJSON(
                    medallion, pageSize: 2, extra: #""checkpoint_pages": 1, "overlap_seconds": 0"#))
            defer { setup.remove() }
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
        }
    }

    /// A drop folder: files land before and during runs, late files with old records, a record stamped in the
    /// future and an unreadable file among them; runs are killed at random moments and the storage is stopped
    /// twice. Every record of every readable file ends in the sink exactly once, the unreadable one is set
    /// aside, and the watermark is the newest record that is not in the future.
    @Test func dropFolderEveryRecordOnceThroughKillsLateFilesAndBadFiles() async throws {
        var random = SeededRandom(seed: Self.seed ^ 0xF11E)
        let setup = try CollectionSetup(sourcesJSON: "{}")
        defer { setup.remove() }
        let inbox = try CollectionSetup.dropFolder("inbox", in: setup)
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
            let count = Int.random(in: 300...1500, using: &random)
            let base = Timestamp.now().adding(.seconds(-60))
            try drop((0..<count).map { ("r\(round)-\(part)-\($0)", base.adding(.milliseconds(Int64($0)))) })
            if round % 3 == 1 {  // a late file: records older than anything collected so far
                try drop(
                    (0..<20).map { ("late\(round)-\(part)-\($0)", start.adding(.seconds(-86_400 * 30))) }, bundle: true)
            }
        }

        try await withStorageService(environment: ["PORT": "\(storagePort)"]) { storage in
            var attack = KillLoop(seed: Self.seed, salt: 0x5DEE_CE66, storage: storage, setup: setup)
            var calls = 0
            try await attack.run(source: "inbox", outageRounds: [4, 9]) { round in
                calls += 1
                try produce(round: round, part: calls)
                guard calls.isMultiple(of: 2) else { return }  // once a round, while the run is under way
                if round == 2 { try drop([("future-1", Timestamp.now().adding(.seconds(2 * 86_400)))]) }
                if round == 5 {
                    try "{this is not JSON".write(toFile: inbox + "/f-bad.json", atomically: true, encoding: .utf8)
                }
            }
            let ids = try setup.sinkIDs("inbox")
            #expect(Set(ids) == expected, "missing: \(expected.subtracting(ids).sorted().prefix(5))")
            #expect(ids.count == expected.count, "duplicates: \(ids.count - Set(ids).count)")
            #expect(FileManager.default.fileExists(atPath: inbox + "/.rejected/f-bad.json"))
            let reason = try String(contentsOfFile: inbox + "/.rejected/f-bad.json.reason", encoding: .utf8)
            #expect(reason.contains("f-bad.json is not valid JSON"), "\(reason)")
            #expect(attack.log.contains("file rejected: moved to the rejected folder"))
            #expect(try await attack.watermark("inbox") == newestNotFuture, "the newest record not in the future")
            try attack.checkLeasesAndQueue(source: "inbox")
            reportFigures(
                "dropFolderEveryRecordOnceThroughKillsLateFilesAndBadFiles",
                attack.figures.merging([
                    "files": fileNumber, "records": expected.count, "sink_lines": ids.count,
                    "duplicates": ids.count - Set(ids).count, "missing": expected.subtracting(ids).count,
                ]) { $1 })
        }
    }
}
