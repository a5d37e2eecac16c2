import Foundation
import Logging
import PostgresNIO
import PostgresSupport
import StorageClient
import TestSupport
import Testing
import WatermarkCore

@testable import CollectionService

/// The shared sink on a real PostgreSQL: "already written" is the table's, whichever replica writes.
@Suite("PostgreSQL sink", .postgres)
struct PostgresSinkTests {
    /// A migrated sink database and a sink on it; `replica` gives another sink (its own client) on the same one.
    struct Fixture {
        let url: PostgresURL
        let client: PostgresClient
        let sink: PostgresSink

        init() async throws {
            let (client, url) = try await PostgresDatabases.newDatabase()
            try await PostgresSink.migrations.apply(client, logger: .quiet)
            let ready = ReadyGate()
            ready.open()
            (self.url, self.client) = (url, client)
            sink = PostgresSink(client: client, url: url, ready: ready, logger: .quiet)
        }

        func replica() throws -> PostgresSink {
            let ready = ReadyGate()
            ready.open()
            return PostgresSink(client: try PostgresDatabases.client(url), url: url, ready: ready, logger: .quiet)
        }

        /// (source, id, version) of every row, in arrival order.
        func rows() async throws -> [String] {
            var rows: [String] = []
            let query: PostgresQuery = "SELECT source_id, id, version FROM records ORDER BY seq"
            for try await (source, id, version) in try await client.query(query).decode((String, String, String).self) {
                rows.append("\(source)/\(id)/\(version)")
            }
            return rows
        }
    }

    let now = ts("2026-12-04T00:00:00Z")

    @Test func aPageIsWrittenOnceAndARepeatedRecordIsDroppedByTheTable() async throws {
        let f = try await Fixture()
        let writer = try await f.sink.open(try SourceID("feed"))
        let first = try await writer.write(
            [
                record("a", "2026-12-01T00:00:00Z"), record("b", "2026-12-02T00:00:00Z"),
                record("a", "2026-12-01T00:00:00Z"),
            ], collectedAt: now)
        #expect(first.map(\.id) == ["a", "b"])
        let again = try await writer.write(
            [record("b", "2026-12-02T00:00:00Z"), record("c", "2026-12-03T00:00:00.123456789Z")], collectedAt: now)
        #expect(again.map(\.id) == ["c"])
        // Another source's records with the same ids are other records.
        let other = try await f.sink.open(try SourceID("other")).write(
            [record("a", "2026-12-01T00:00:00Z")], collectedAt: now)
        #expect(other.count == 1)
        #expect(
            try await f.rows() == [
                "feed/a/2026-12-01T00:00:00Z", "feed/b/2026-12-02T00:00:00Z", "feed/c/2026-12-03T00:00:00.123456789Z",
                "other/a/2026-12-01T00:00:00Z",
            ])
    }

    @Test func twoReplicasWritingTheSameRecordsAtOnceStoreEachOnce() async throws {
        let f = try await Fixture()
        let sinks = [f.sink, try f.replica()]
        let source = try SourceID("feed")
        // Both replicas send overlapping pages at the same time, in opposite orders (the insert's key order keeps
        // them from deadlocking).
        let pages = (0..<20).map { page in (0..<50).map { record("r\(page * 25 + $0)", "2026-12-01T00:00:00Z") } }
        let fresh = try await withThrowingTaskGroup(of: Int.self) { group in
            for (index, sink) in sinks.enumerated() {
                group.addTask {
                    let writer = try await sink.open(source)
                    var written = 0
                    for page in index == 0 ? pages : pages.reversed() {
                        written += try await writer.write(index == 0 ? page : page.reversed(), collectedAt: now).count
                    }
                    return written
                }
            }
            return try await group.reduce(0, +)
        }
        let distinct = Set(pages.joined().map(\.id)).count
        #expect(fresh == distinct)
        let rows = try await f.rows()
        #expect(rows.count == distinct && Set(rows).count == distinct)
    }

    /// A record whose id (from `"\u0000"` in the source's JSON) holds a NUL, which `text` cannot: its insert failed
    /// the page on every run and the source stopped for good. The key is kept with the NUL written as its escape,
    /// and the record is dropped when it comes again, as any other.
    @Test func aRecordWhoseIdHoldsANulIsWrittenOnce() async throws {
        let f = try await Fixture()
        let writer = try await f.sink.open(try SourceID("feed"))
        let nul = CollectedRecord(
            id: "indicator--a\u{0}b", version: "2026-12-01T00:00:00Z", mark: ts("2026-12-01T00:00:00Z"),
            json: Data(#"{"id":"indicator--a\u0000b"}"#.utf8))
        let page = [record("a", "2026-12-01T00:00:00Z"), nul]
        #expect(try await writer.write(page, collectedAt: now).map(\.id) == ["a", nul.id])
        #expect(try await writer.write(page.reversed(), collectedAt: now).isEmpty)
        #expect(
            try await f.rows() == ["feed/a/2026-12-01T00:00:00Z", #"feed/indicator--a\u0000b/2026-12-01T00:00:00Z"#])
    }

    @Test func theRecordIsKeptByteForByteAndAsJSONWherePostgreSQLCanHoldIt() async throws {
        let f = try await Fixture()
        let texts = [
            #"{"id":"x","name":"Ünïcode \ud83d\ude00 é","n":1.50,"z":0,"a":[]}"#,
            #"{"id":"nul","name":"a\u0000b"}"#,
            #"{"id":"lone","name":"\udc00"}"#,
            #"{"id":"huge","n":1e1000000,"m":-2.5E-1000000}"#,
            #"{"id":"big","n":1e400,"s":"1e1000000 in a string"}"#,
        ]
        let records = texts.enumerated().map { index, text in
            CollectedRecord(id: "k\(index)", version: "v", mark: ts("2026-12-01T00:00:00Z"), json: Data(text.utf8))
        }
        _ = try await f.sink.open(try SourceID("feed")).write(records, collectedAt: now)
        var stored: [String: (raw: String, json: String?)] = [:]
        let query: PostgresQuery = "SELECT id, raw, record::text FROM records"
        for try await (id, raw, json) in try await f.client.query(query).decode((String, String, String?).self) {
            stored[id] = (raw, json)
        }
        #expect(stored["k0"]?.raw == texts[0])
        #expect(stored["k0"]?.json?.contains("😀") == true)
        #expect(stored["k1"]?.raw == texts[1] && stored["k1"]?.json == nil)
        #expect(stored["k2"]?.raw == texts[2] && stored["k2"]?.json == nil)
        // A number beyond `numeric` is kept as text only (the cast failed the page on every run); one within it,
        // and a string that looks like one, are JSON as well.
        #expect(stored["k3"]?.raw == texts[3] && stored["k3"]?.json == nil)
        #expect(stored["k4"]?.raw == texts[4] && stored["k4"]?.json?.contains("1e1000000 in a string") == true)
    }

    @Test(arguments: [
        (#"{"a":"plain"}"#, true), (#"{"a":"\\u0000 is text"}"#, true), (#"{"a":"\u0000"}"#, false),
        (#"{"a":"\uD83D\uDE00"}"#, true), (#"{"a":"\uD83D"}"#, false), (#"{"a":"\uDE00\uD83D"}"#, false),
        (#"{"a":"\"\u00e9"}"#, true), (#"{"n":1e1000}"#, true), (#"{"n":1e1001}"#, false),
        (#"{"n":[1E-99999999]}"#, false),
        (#"{"n":"1e99999 is text","m":-0.5e-3}"#, true),
    ])
    func jsonbCanHold(text: String, holds: Bool) {
        #expect(PostgresSink.jsonbCanHold(text) == holds)
    }

    @Test func aRunOnThePostgresSinkWritesItsRecordsOnceAndTheNextRunDropsWhatCameBack() async throws {
        let f = try await Fixture()
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let storage = InMemoryStorageClient()
        let manager = try WatermarkManager(client: storage, stateDirectory: dir + "/.state", logger: .quiet)
        let runner = CollectionRunner(
            manager: manager, sink: f.sink, owner: "replica-a", logger: .quiet, clock: { ts("2026-11-27T00:00:00Z") })
        let source = SourceConfiguration(id: try SourceID("feed"), kind: .directory(DirectorySettings(path: dir)))
        let collector = ScriptedCollector(pages: [
            [record("a", "2026-11-25T00:00:00Z")], [record("b", "2026-11-26T00:00:00Z")],
        ])
        let first = await runner.run(source, collector: collector)
        #expect(first.outcome == .success && first.recordsCollected == 2)
        // The source's filter is inclusive: "b", at the mark, comes again and the table drops it.
        let second = await runner.run(source, collector: collector)
        #expect(second.outcome == .success && second.recordsCollected == 0 && second.duplicatesDropped == 1)
        #expect(try await f.rows() == ["feed/a/2026-11-25T00:00:00Z", "feed/b/2026-11-26T00:00:00Z"])
        #expect(
            try await storage.getWatermark(sourceID: source.id)?.lastSuccessfulTimestamp == ts("2026-11-26T00:00:00Z"))
    }

    @Test func aPageThatFailsLeavesNothingBehind() async throws {
        let f = try await Fixture()
        let writer = try await f.sink.open(try SourceID("feed"))
        // Not UTF-8: refused before it is sent.
        let notText = CollectedRecord(id: "bin", version: "v", mark: ts("2026-12-01T00:00:00Z"), json: Data([0xFF]))
        await #expect(throws: SinkError.self) {
            _ = try await writer.write([record("good", "2026-12-01T00:00:00Z"), notText], collectedAt: now)
        }
        // Refused by PostgreSQL in the page's second statement: the first one's rows are rolled back with it.
        let good = (0..<PostgresSink.chunkRecords).map { record("r\($0)", "2026-12-01T00:00:00Z") }
        let cut = CollectedRecord(
            id: "~cut", version: "v", mark: ts("2026-12-01T00:00:00Z"), json: Data(#"{"id":"#.utf8))
        await #expect(throws: SinkError.self) { _ = try await writer.write(good + [cut], collectedAt: now) }
        #expect(try await f.rows().isEmpty)
        // And the same records go in once the page is whole.
        #expect(try await writer.write(good, collectedAt: now).count == good.count)
    }

    /// A page's rows go in statements of at most `chunkRecords` rows and `chunkBytes` bytes of text (PostgreSQL
    /// refuses a message over 1 GB: 2,000 records of 512 KiB failed the same page at every run); a row larger alone
    /// is a statement of its own. A page of records of 40 MiB each is written whole, two statements of one row.
    @Test func aPageIsSentInStatementsBoundedByRowsAndBytes() async throws {
        let sizes = [3, 3, 3, 10, 1, 1]
        let chunks = PostgresSink.chunks(sizes, records: 2, bytes: 6) { $0 }.map { Array($0) }
        #expect(chunks == [[3, 3], [3], [10], [1, 1]])
        #expect(PostgresSink.chunks([Int](), records: 2, bytes: 6) { $0 }.isEmpty)

        let f = try await Fixture()
        let writer = try await f.sink.open(try SourceID("feed"))
        let padding = String(repeating: "x", count: 40 << 20)
        let large = (0..<2).map { index in
            CollectedRecord(
                id: "large-\(index)", version: "v", mark: ts("2026-12-01T00:00:00Z"),
                json: Data(#"{"id":"large-\#(index)","pad":"\#(padding)"}"#.utf8))
        }
        #expect(try await writer.write(large, collectedAt: now).count == 2)
        #expect(try await f.rows() == ["feed/large-0/v", "feed/large-1/v"])
    }
}
