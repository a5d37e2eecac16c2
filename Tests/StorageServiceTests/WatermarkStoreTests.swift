import GRDB
import PostgresNIO
import PostgresSupport
import TestSupport
import Testing
import WatermarkCore
import WatermarkStores

@testable import StorageService

// Over 300 lines for a reason: one store suite run against the memory, SQLite and PostgreSQL stores alike.

/// The watermark rules, run against every store so the SQLite store and the in-memory one (which the
/// mock client uses) can never disagree.
@Suite("WatermarkStore rules", .postgres)
struct WatermarkStoreTests {
    let clock = ManualClock(.at("2026-01-01T00:00:00Z"))

    private func success(
        _ id: String, _ time: String, records: Int64 = 1, force: Bool = false, key: String? = nil,
        token: Int64? = nil, precondition: WritePrecondition? = nil
    ) -> WatermarkWrite {
        WatermarkWrite(
            sourceID: sid(id), update: .success(.at(time), records: records), force: force, precondition: precondition,
            leaseToken: token, idempotencyKey: key
        )
    }

    @Test("first write creates version 1, each accepted update adds exactly 1", arguments: StoreKind.allCases)
    func versions(kind: StoreKind) async throws {
        let store = try await kind.make(clock: clock)
        #expect(try await store.watermark(for: sid("otx")) == nil)
        let first = try await store.write(success("otx", "2025-12-31T00:00:00Z", records: 150))
        #expect(first.created && first.watermark.version == 1)
        #expect(first.watermark.recordsCollected == 150)
        #expect(first.watermark.lastRunTimestamp == clock.now())
        #expect(first.watermark.createdAt == clock.now())
        clock.advance(.seconds(10))
        let second = try await store.write(success("otx", "2025-12-31T01:00:00Z"))
        #expect(!second.created && second.watermark.version == 2)
        #expect(second.watermark.createdAt == first.watermark.createdAt)
        #expect(second.watermark.lastRunTimestamp == clock.now())
        #expect(try await store.watermark(for: sid("otx")) == second.watermark)
    }

    @Test(
        "regression is refused and changes nothing; equal is accepted; force backfills", arguments: StoreKind.allCases)
    func regression(kind: StoreKind) async throws {
        let store = try await kind.make(clock: clock)
        let stored = try await store.write(success("s", "2025-12-31T12:00:00.5Z")).watermark
        clock.advance(.seconds(1))
        let code = await refusal { _ = try await store.write(success("s", "2025-12-31T12:00:00.499999999Z")) }
        #expect(code == "watermark_regression")
        #expect(try await store.watermark(for: sid("s")) == stored)
        let equal = try await store.write(success("s", "2025-12-31T12:00:00.5Z"))
        #expect(equal.watermark.version == 2)
        let forced = try await store.write(success("s", "2025-01-01T00:00:00Z", force: true))
        #expect(forced.watermark.lastSuccessfulTimestamp == .at("2025-01-01T00:00:00Z"))
        #expect(forced.watermark.version == 3)
    }

    @Test("a failed run keeps the last success, counts failures, a success resets them", arguments: StoreKind.allCases)
    func failedRuns(kind: StoreKind) async throws {
        let store = try await kind.make(clock: clock)
        let neverSucceeded = try await store.write(WatermarkWrite(sourceID: sid("f"), update: .failed("HTTP 500")))
        #expect(neverSucceeded.watermark.lastSuccessfulTimestamp == nil)
        #expect(neverSucceeded.watermark.consecutiveFailures == 1)
        _ = try await store.write(success("f", "2025-12-31T00:00:00Z"))
        let failed = try await store.write(WatermarkWrite(sourceID: sid("f"), update: .failed("timeout", records: 3)))
        let again = try await store.write(WatermarkWrite(sourceID: sid("f"), update: .failed("timeout")))
        #expect(failed.watermark.lastSuccessfulTimestamp == .at("2025-12-31T00:00:00Z"))
        #expect(again.watermark.status == .failed && again.watermark.errorMessage == "timeout")
        #expect(again.watermark.consecutiveFailures == 2)
        let recovered = try await store.write(success("f", "2025-12-31T00:00:00Z"))
        #expect(recovered.watermark.consecutiveFailures == 0 && recovered.watermark.errorMessage == nil)
    }

    @Test("a success too far in the future is refused", arguments: StoreKind.allCases)
    func future(kind: StoreKind) async throws {
        let store = try await kind.make(clock: clock)
        let limit = clock.now().adding(.seconds(300))
        #expect(
            await refusal { _ = try await store.write(success("s", limit.adding(.nanoseconds(1)).description)) }
                == "timestamp_in_future")
        #expect(try await store.watermark(for: sid("s")) == nil)
        #expect(try await store.write(success("s", limit.description)).created)
    }

    @Test("If-Match and If-None-Match", arguments: StoreKind.allCases)
    func preconditions(kind: StoreKind) async throws {
        let store = try await kind.make(clock: clock)
        #expect(
            await refusal { _ = try await store.write(success("p", "2025-01-01T00:00:00Z", precondition: .version(1))) }
                == "precondition_failed")
        #expect(
            await refusal { _ = try await store.write(success("p", "2025-01-01T00:00:00Z", precondition: .exists)) }
                == "precondition_failed")
        #expect(try await store.write(success("p", "2025-01-01T00:00:00Z", precondition: .absent)).created)
        #expect(
            await refusal { _ = try await store.write(success("p", "2025-01-02T00:00:00Z", precondition: .absent)) }
                == "precondition_failed")
        #expect(
            await refusal { _ = try await store.write(success("p", "2025-01-02T00:00:00Z", precondition: .version(2))) }
                == "precondition_failed")
        #expect(
            try await store.write(success("p", "2025-01-02T00:00:00Z", precondition: .version(1))).watermark.version
                == 2)
        #expect(
            try await store.write(success("p", "2025-01-03T00:00:00Z", precondition: .exists)).watermark.version == 3)
        #expect(
            await refusal { try await store.delete(sid("p"), precondition: .version(2), leaseToken: nil) }
                == "precondition_failed")
        try await store.delete(sid("p"), precondition: .version(3), leaseToken: nil)
    }

    @Test("an idempotency key replays the first answer and is applied once", arguments: StoreKind.allCases)
    func idempotency(kind: StoreKind) async throws {
        let store = try await kind.make(clock: clock)
        let first = try await store.write(success("i", "2025-01-01T00:00:00Z", key: "k1"))
        clock.advance(.seconds(5))
        let replay = try await store.write(success("i", "2025-01-01T00:00:00Z", key: "k1"))
        #expect(replay.replayed && replay.created && replay.watermark == first.watermark)
        #expect(try await store.watermark(for: sid("i"))?.version == 1)
        #expect(try await store.history(for: sid("i"), limit: 10).count == 1)
        #expect(
            await refusal { _ = try await store.write(success("i", "2025-01-02T00:00:00Z", key: "k1")) }
                == "idempotency_key_reused")
        let other = try await store.write(success("i", "2025-01-02T00:00:00Z", key: "k2"))
        #expect(!other.replayed && other.watermark.version == 2)
        // Even after later writes, the replay answers what the first request was answered.
        let late = try await store.write(success("i", "2025-01-01T00:00:00Z", key: "k1"))
        #expect(late.watermark.version == 1 && late.replayed)
    }

    /// A keyed update applied, its answer lost, the source reset by an operator, then the update retried (a
    /// collector's queue replayed): the retry is answered its first answer and the reset stands. The reset deleted
    /// the keys, and the retry applied again (201), undoing the reset and recording the run twice.
    @Test("a keyed update retried after a reset is answered, not applied again", arguments: StoreKind.allCases)
    func idempotencyAcrossAReset(kind: StoreKind) async throws {
        let store = try await kind.make(clock: clock)
        let first = try await store.write(success("r", "2025-01-01T00:00:00Z", key: "k1"))
        try await store.delete(sid("r"), precondition: nil, leaseToken: nil)
        clock.advance(.seconds(5))
        let retry = try await store.write(success("r", "2025-01-01T00:00:00Z", key: "k1"))
        #expect(retry.replayed && retry.created && retry.watermark == first.watermark)
        #expect(try await store.watermark(for: sid("r")) == nil)
        #expect(try await store.history(for: sid("r"), limit: 10).map(\.version) == [2, 1])
        // Another key is a new update, on top of the reset.
        let next = try await store.write(success("r", "2025-01-01T00:00:00Z", key: "k2"))
        #expect(next.created && !next.replayed && next.watermark.version == 3)
    }

    @Test("idempotency keys expire after the retention", arguments: StoreKind.allCases)
    func idempotencyExpiry(kind: StoreKind) async throws {
        let store = try await kind.make(clock: clock, policy: WatermarkPolicy(idempotencyRetention: .seconds(60)))
        _ = try await store.write(success("e", "2025-01-01T00:00:00Z", key: "old"))
        clock.advance(.seconds(61))
        _ = try await store.write(success("e", "2025-01-01T00:00:00Z", key: "new"))  // purges "old"
        let again = try await store.write(success("e", "2025-01-01T00:00:00Z", key: "old"))
        #expect(!again.replayed && again.watermark.version == 3)
    }

    @Test(
        "delete resets a source: the history shows the reset with who and why, and every run after the next update",
        arguments: StoreKind.allCases)
    func delete(kind: StoreKind) async throws {
        let store = try await kind.make(clock: clock)
        #expect(
            await refusal { try await store.delete(sid("d"), precondition: nil, leaseToken: nil) }
                == "watermark_not_found")
        _ = try await store.write(success("d", "2025-01-01T00:00:00Z"))
        _ = try await store.write(success("d", "2025-01-02T00:00:00Z"))
        try await store.delete(
            sid("d"), precondition: nil, leaseToken: nil, attribution: Attribution(caller: "ops", reason: "bad data"))
        #expect(try await store.watermark(for: sid("d")) == nil)
        // The reset is the newest run, attributed; the runs before it stay.
        let afterReset = try await store.history(for: sid("d"), limit: 10)
        #expect(afterReset.map(\.version) == [3, 2, 1] && afterReset[0].status == .reset)
        #expect(afterReset[0].actor == "ops" && afterReset[0].reason == "bad data")
        #expect(afterReset[0].lastSuccessfulTimestamp == nil && afterReset[0].timestamp == nil)
        // Recreated: a regression is no longer one, the ETag never repeats, and the runs were kept.
        let recreated = try await store.write(success("d", "2024-01-01T00:00:00Z"))
        #expect(recreated.created && recreated.watermark.version == 4)
        #expect(try await store.history(for: sid("d"), limit: 10).map(\.version) == [4, 3, 2, 1])
        #expect(await refusal { _ = try await store.history(for: sid("never"), limit: 10) } == "watermark_not_found")
    }

    @Test("history is newest first, limited, and bounded per source", arguments: StoreKind.allCases)
    func history(kind: StoreKind) async throws {
        let store = try await kind.make(clock: clock, policy: WatermarkPolicy(historyRetention: 3))
        #expect(await refusal { _ = try await store.history(for: sid("h"), limit: 10) } == "watermark_not_found")
        for day in 1...5 { _ = try await store.write(success("h", "2025-01-0\(day)T00:00:00Z", records: Int64(day))) }
        _ = try await store.write(WatermarkWrite(sourceID: sid("h"), update: .failed("boom")))
        let runs = try await store.history(for: sid("h"), limit: 10)
        #expect(runs.map(\.version) == [6, 5, 4])
        #expect(runs[0].status == .failed && runs[0].timestamp == nil && runs[0].errorMessage == "boom")
        #expect(runs[0].lastSuccessfulTimestamp == .at("2025-01-05T00:00:00Z"))
        #expect(runs[1].timestamp == .at("2025-01-05T00:00:00Z") && runs[1].recordsCollected == 5)
        #expect(try await store.history(for: sid("h"), limit: 1).map(\.version) == [6])
    }

    /// What a write answers is what the store keeps, byte for byte: error messages and reasons of every kind of
    /// character (controls but NUL, non-ASCII, combining marks, separators) read back unchanged from the database.
    /// SQLite once kept an error message only up to a NUL while the answer held all of it; a NUL is refused now, by
    /// every store, and changes nothing.
    @Test("texts are kept as answered; a NUL is refused and changes nothing", arguments: StoreKind.allCases)
    func textsAreKeptAsAnswered(kind: StoreKind) async throws {
        let store = try await kind.make(clock: clock)
        let seed = SeededRandom.seed(from: "STORE_TEXT_SEED", default: 20_261_206)
        var random = SeededRandom(seed: seed)
        let alphabet: [String] =
            (1..<0x80).map { String(UnicodeScalar(UInt8($0))) }
            + ["é", "e\u{301}", "ß", "漢", "🎉", "\u{85}", "\u{2028}", "\u{FEFF}", "\u{FFFD}"]
        func text(_ range: ClosedRange<Int>) -> String {
            (0..<Int.random(in: range, using: &random)).map { _ in alphabet.randomElement(using: &random)! }.joined()
        }
        for _ in 0..<40 {
            let message = text(0...60)
            let reason = text(1...30)
            let outcome = try await store.write(
                WatermarkWrite(
                    sourceID: sid("texts"), update: .failed(message), attribution: Attribution(reason: reason)))
            #expect(outcome.watermark.errorMessage.map { Array($0.utf8) } == Array(message.utf8), "seed \(seed)")
            let stored = try #require(try await store.watermark(for: sid("texts")))
            #expect(stored == outcome.watermark && stored.errorMessage.map { Array($0.utf8) } == Array(message.utf8))
            let run = try #require(try await store.history(for: sid("texts"), limit: 1).first)
            #expect(run.errorMessage.map { Array($0.utf8) } == Array(message.utf8), "seed \(seed)")
            #expect(run.reason.map { Array($0.utf8) } == Array(reason.utf8), "seed \(seed)")
        }
        let before = try await store.watermark(for: sid("texts"))
        let nul = WatermarkWrite(sourceID: sid("texts"), update: .failed("kept up to\u{0}here"))
        #expect(await refusal { _ = try await store.write(nul) } == "invalid_body")
        #expect(try await store.watermark(for: sid("texts")) == before)
        #expect(try await store.history(for: sid("texts"), limit: 1000).count == 40)
    }

    @Test("leases: one holder, renewals keep the token, fencing refuses the old holder", arguments: StoreKind.allCases)
    func leases(kind: StoreKind) async throws {
        let store = try await kind.make(clock: clock)
        // A source with no watermark yet can be leased (its first collection).
        let lease = try await store.acquireLease(for: sid("l"), owner: "a", ttl: .seconds(60))
        #expect(lease.fencingToken == 1 && lease.expiresAt == clock.now().adding(.seconds(60)))
        do {
            _ = try await store.acquireLease(for: sid("l"), owner: "b", ttl: .seconds(60))
            Issue.record("a second owner got the lease")
        } catch let error as WatermarkError {
            #expect(error.code == "lease_held" && error.holder == "a" && error.expiresAt == lease.expiresAt)
        }
        clock.advance(.seconds(30))
        let renewed = try await store.acquireLease(for: sid("l"), owner: "a", ttl: .seconds(60))
        #expect(renewed.fencingToken == 1 && renewed.expiresAt == clock.now().adding(.seconds(60)))

        #expect(await refusal { _ = try await store.write(success("l", "2025-01-01T00:00:00Z")) } == "lease_required")
        #expect(
            await refusal { _ = try await store.write(success("l", "2025-01-01T00:00:00Z", token: 7)) } == "stale_lease"
        )
        #expect(
            await refusal { try await store.delete(sid("l"), precondition: nil, leaseToken: nil) } == "lease_required")
        #expect(try await store.write(success("l", "2025-01-01T00:00:00Z", token: 1)).created)

        // "a" pauses past its lease; "b" takes over with a new token; "a" can no longer write.
        clock.advance(.seconds(61))
        let taken = try await store.acquireLease(for: sid("l"), owner: "b", ttl: .seconds(60))
        #expect(taken.fencingToken == 2)
        #expect(
            await refusal { _ = try await store.write(success("l", "2025-01-02T00:00:00Z", token: 1)) } == "stale_lease"
        )
        #expect(await refusal { try await store.releaseLease(for: sid("l"), token: 1) } == "stale_lease")
        #expect(await refusal { try await store.releaseLease(for: sid("l"), token: nil) } == "lease_required")
        #expect(try await store.write(success("l", "2025-01-02T00:00:00Z", token: 2)).watermark.version == 2)
        try await store.releaseLease(for: sid("l"), token: 2)

        // Released: anyone may take it, with a new token; a token of a lease that was taken over stays stale.
        let third = try await store.acquireLease(for: sid("l"), owner: "a", ttl: .seconds(60))
        #expect(third.fencingToken == 3)
        try await store.releaseLease(for: sid("l"), token: 3)
        #expect(
            await refusal { _ = try await store.write(success("l", "2025-01-03T00:00:00Z", token: 2)) } == "stale_lease"
        )
        // Without a live lease, a write without a token behaves as usual; so does one whose lease just ran out.
        #expect(try await store.write(success("l", "2025-01-03T00:00:00Z")).watermark.version == 3)
        let fourth = try await store.acquireLease(for: sid("l"), owner: "c", ttl: .seconds(10))
        clock.advance(.seconds(11))
        #expect(
            try await store.write(success("l", "2025-01-04T00:00:00Z", token: fourth.fencingToken)).watermark.version
                == 4)
        // Releasing an expired lease is not an error.
        try await store.releaseLease(for: sid("l"), token: fourth.fencingToken)
    }

    @Test("lease requests are validated", arguments: StoreKind.allCases)
    func leaseValidation(kind: StoreKind) async throws {
        let store = try await kind.make(clock: clock)
        #expect(
            await refusal { _ = try await store.acquireLease(for: sid("v"), owner: "", ttl: .seconds(60)) }
                == "invalid_body")
        #expect(
            await refusal { _ = try await store.acquireLease(for: sid("v"), owner: "a", ttl: .zero) } == "invalid_body")
        #expect(
            await refusal { _ = try await store.acquireLease(for: sid("v"), owner: "a", ttl: .seconds(86_401)) }
                == "invalid_body")
        #expect(
            await refusal { _ = try await store.acquireLease(for: sid("v"), owner: "bad\nowner", ttl: .seconds(5)) }
                == "invalid_body")
    }

    @Test("list: sorted by source id, paged by cursor, filtered by status and staleness", arguments: StoreKind.allCases)
    func list(kind: StoreKind) async throws {
        let store = try await kind.make(clock: clock)
        for id in ["c", "a", "e", "b", "d", "B", "a.b"] {
            _ = try await store.write(success(id, "2025-12-31T23:00:00Z"))
        }
        _ = try await store.write(WatermarkWrite(sourceID: sid("b"), update: .failed("x")))
        _ = try await store.write(WatermarkWrite(sourceID: sid("never"), update: .failed("x")))
        _ = try await store.write(success("old", "2025-06-01T00:00:00Z"))

        var seen: [String] = []
        var cursor: SourceID?
        repeat {
            let page = try await store.list(WatermarkQuery(limit: 3, after: cursor))
            #expect(page.watermarks.count <= 3)
            seen += page.watermarks.map(\.sourceID.rawValue)
            cursor = try page.nextCursor.map { try SourceID($0) }
        } while cursor != nil
        #expect(seen == ["B", "a", "a.b", "b", "c", "d", "e", "never", "old"])

        let failed = try await store.list(WatermarkQuery(status: .failed))
        #expect(failed.watermarks.map(\.sourceID.rawValue) == ["b", "never"])
        let stale = try await store.list(WatermarkQuery(staleAfter: .seconds(7200)))
        #expect(stale.watermarks.map(\.sourceID.rawValue) == ["never", "old"])
        #expect(stale.nextCursor == nil)

        let summary = try await store.summary()
        #expect(summary == WatermarkSummary(total: 9, failed: 2, stale: 2))
    }

    /// The SQLite and PostgreSQL stores count sources from counters and hour buckets kept by triggers; the
    /// in-memory store counts them one by one. The same writes (successes over several days, failures, deletes,
    /// backfills) and clock moves across hour boundaries must give both the same summary, every time.
    @Test(
        "the counts from triggers and hour buckets equal a count of every source, across writes, deletes and hours",
        arguments: [StoreKind.sqlite, .postgres])
    func staleCountFromHourBuckets(kind: StoreKind) async throws {
        let memoryClock = ManualClock(clock.now())
        let memory = try await StoreKind.memory.make(clock: memoryClock)
        let sqlite = try await kind.make(clock: clock)
        for step in 0..<240 {
            let id = sid("s\((step * 7919) % 37)")
            let write: WatermarkWrite
            switch (step * 31) % 10 {
            case 0, 1:
                write = WatermarkWrite(sourceID: id, update: .failed("down"))
            case 2:
                for store in [memory, sqlite] {
                    _ = await refusal { try await store.delete(id, precondition: nil, leaseToken: nil) }
                }
                continue
            default:
                // Up to ten hours back from the moving clock (the cutoff is two hours back), at seconds that fall
                // on either side of hour boundaries; force lets a backfill through.
                let at = clock.now().adding(.seconds(-Int64((step * 104_729) % (10 * 3600))))
                write = WatermarkWrite(sourceID: id, update: .success(at, records: 1), force: true)
            }
            let inMemory = await refusal { _ = try await memory.write(write) }
            let onDisk = await refusal { _ = try await sqlite.write(write) }
            #expect(inMemory == onDisk)
            if step % 12 == 0 {
                let (a, b) = (try await memory.summary(), try await sqlite.summary())
                #expect(a == b, "step \(step) at \(clock.now()): memory \(a), sqlite \(b)")
                #expect(step < 24 || (b.stale > 0 && b.stale < b.total), "a count that proves little: \(b)")
                // The cutoff moves by 47 minutes: it lands at other places within an hour, and in other hours.
                clock.advance(.seconds(47 * 60))
                memoryClock.advance(.seconds(47 * 60))
            }
        }
    }

    /// A database written before the hour buckets existed gets them from its rows when it is migrated.
    @Test("a database from before the hour buckets gets them filled from its rows")
    func hourBucketsBackfilled() async throws {
        let queue = try DatabaseQueue()
        try WatermarkDatabase.migrator.migrate(queue, upTo: "v2-counts-and-filter-indexes")
        try await queue.write { db in
            let rows: [(String, String?)] = [
                ("a", "2025-12-31T20:10:00.000000000Z"), ("b", nil), ("c", "2025-12-31T23:30:00.000000000Z"),
                ("d", "2025-12-31T21:59:59.999999999Z"), ("e", "2025-12-31T22:00:00.000000000Z"),
            ]
            for (id, last) in rows {
                try db.execute(
                    sql: """
                        INSERT INTO watermark (source_id, last_successful_timestamp, last_run_timestamp, status,
                            records_collected, version, consecutive_failures, created_at)
                        VALUES (?, ?, '2025-12-31T23:30:00.000000000Z', ?, 0, 1, 0, '2025-12-31T00:00:00.000000000Z')
                        """, arguments: [id, last, last == nil ? "failed" : "success"])
            }
        }
        let store = try SQLiteWatermarkStore(
            writer: queue, policy: WatermarkPolicy(), logger: .quiet, clock: { clock.now() })
        // Cutoff 2025-12-31T22:00:00Z (two hours before the clock): a, b (never) and d are stale, e is not.
        #expect(try await store.summary() == WatermarkSummary(total: 5, failed: 1, stale: 3))
    }

    /// A database that takes no writes (a standby after a failover, `default_transaction_read_only`) answered the
    /// health check healthy while every write got 503: it is unhealthy now, naming why.
    @Test("PostgreSQL's health check fails on a database that takes no writes")
    func postgresHealthSeesAReadOnlyDatabase() async throws {
        let (client, url) = try await PostgresDatabases.newDatabase()
        try await PostgresSchema.migrate(client, logger: .quiet)
        func store(_ client: PostgresClient) -> PostgresWatermarkStore {
            let store = PostgresWatermarkStore(
                client: client, url: url, policy: WatermarkPolicy(), logger: .quiet, clock: { clock.now() })
            store.ready.open()
            return store
        }
        #expect(await refusal { try await store(client).checkHealth() } == nil)
        try await PostgresDatabases.administer(
            "ALTER DATABASE \(unescaped: url.database) SET default_transaction_read_only = on")
        let readOnly = store(try PostgresDatabases.client(url))  // new sessions take the setting
        let write = WatermarkWrite(sourceID: sid("a"), update: .success(clock.now(), records: 1))
        #expect(await refusal { _ = try await readOnly.write(write) } == "database_unavailable")
        do {
            try await readOnly.checkHealth()
            Issue.record("a database that takes no writes was called healthy")
        } catch let error as WatermarkError {
            #expect(
                error.code == "database_unavailable" && error.message.contains("takes no writes"), "\(error.message)")
        }
        try await PostgresDatabases.administer(
            "ALTER DATABASE \(unescaped: url.database) SET default_transaction_read_only = off")
        #expect(await refusal { try await store(try PostgresDatabases.client(url)).checkHealth() } == nil)
    }

    /// While the service starts on PostgreSQL (connecting, migrating: up to 15 s), the health check is 503 at once
    /// (it waited for the start: a readiness probe gave up after its 3 s) and an operation 503 at its deadline.
    @Test("before PostgreSQL is ready, the health check is 503 at once and an operation at its deadline")
    func notReadyYet() async throws {
        let (client, url) = try await PostgresDatabases.newDatabase()
        struct Hung: Error {}
        /// The refusal of `body` on a store whose start never ends, or "hung" when it has not answered within 20 s
        /// (the start then fails, so that the waiting operation ends).
        func answer(_ body: @escaping @Sendable (PostgresWatermarkStore) async throws -> Void) async throws -> String? {
            let store = PostgresWatermarkStore(client: client, url: url, policy: WatermarkPolicy(), logger: .quiet)
            return try await withThrowingTaskGroup(of: String?.self) { group in
                group.addTask { await refusal { try await body(store) } }
                group.addTask {
                    try await Task.sleep(for: .seconds(20))
                    return "hung"
                }
                defer {
                    group.cancelAll()
                    store.ready.fail(Hung())
                }
                return try await group.next() ?? nil
            }
        }
        let start = ContinuousClock.now
        #expect(try await answer { try await $0.checkHealth() } == "database_unavailable")
        #expect(ContinuousClock.now - start < .seconds(3))
        #expect(try await answer { _ = try await $0.watermark(for: sid("a")) } == "database_unavailable")
        #expect(
            try await answer { _ = try await $0.write(success("a", "2025-12-31T12:00:00Z")) } == "database_unavailable")
    }

    /// A connection whose server stops answering without closing it (a failover that takes the primary's address
    /// away; here its backend is stopped with SIGSTOP) is closed when the operation's deadline passes, so the pool's
    /// slot is free and the next operation opens a connection that answers. The stuck connection held its slot for
    /// as long as TCP took to give up (about 15 minutes): every operation of a full pool answered 503.
    @Test(
        "a PostgreSQL connection whose server stopped answering is closed at the deadline, and the pool goes on",
        arguments: [false, true])
    func aStuckConnectionIsClosedAtTheDeadline(writing: Bool) async throws {
        let (admin, url) = try await PostgresDatabases.newDatabase()
        try await PostgresSchema.migrate(admin, logger: .quiet)
        let client = try PostgresDatabases.client(url, maximumConnections: 1)
        let store = PostgresWatermarkStore(client: client, url: url, policy: WatermarkPolicy(), logger: .quiet)
        store.ready.open()
        let operation: @Sendable (String) async throws -> Void = { id in
            if writing {
                _ = try await store.write(success(id, "2025-12-31T12:00:00Z"))
            } else {
                _ = try await store.watermark(for: sid(id))
            }
        }
        let before = Set(try await PostgresDatabases.backends(on: url.database))
        #expect(await refusal { try await operation("a") } == nil)  // opens the pool's one connection
        let stopped = Set(try await PostgresDatabases.backends(on: url.database)).subtracting(before)
        #expect(stopped.count == 1)
        for pid in stopped { kill(pid, SIGSTOP) }
        defer { for pid in stopped { kill(pid, SIGCONT) } }
        #expect(await refusal { try await operation("b") } == "database_unavailable")
        // The backend is still stopped: the answer comes from a new connection (waiting for the slot, it was 503).
        #expect(await refusal { try await operation("c") } == nil)
    }

    /// A transaction whose connection the deadline closed sends no further statement: postgres-nio drops the write
    /// of a closed channel, and the statement was never answered (the operation's task waited for ever).
    @Test("a PostgreSQL transaction whose connection the deadline closed sends no statement")
    func noStatementAfterTheDeadlineClosedTheConnection() async throws {
        let (client, _) = try await PostgresDatabases.newDatabase()
        try await PostgresSchema.migrate(client, logger: .quiet)
        let (refused, open) = try await client.withConnection { connection in
            let closed = PostgresTransaction(connection: connection, logger: .quiet, closed: { true })
            let refused = await refusal { _ = try await closed.watermark(sid("a")) }
            let open = try await PostgresTransaction(connection: connection, logger: .quiet).watermark(sid("a"))
            return (refused, open)
        }
        #expect(refused?.contains("CancellationError") == true && open == nil, "\(refused ?? "sent")")
    }

    /// A PostgreSQL database written before its counts existed gets them from its rows when it is migrated.
    @Test("a PostgreSQL database from before the counts gets them filled from its rows")
    func postgresCountsBackfilled() async throws {
        let (client, url) = try await PostgresDatabases.newDatabase()
        try await migrateToV1(client)
        let rows: [(String, String?)] = [
            ("a", "2025-12-31T20:10:00.000000000Z"), ("b", nil), ("c", "2025-12-31T23:30:00.000000000Z"),
            ("d", "2025-12-31T21:59:59.999999999Z"), ("e", "2025-12-31T22:00:00.000000000Z"),
        ]
        for (id, last) in rows { try await client.query(v1Insert(id, last)) }
        #expect(
            try await PostgresSchema.migrate(client, logger: .quiet) == [
                "v2-counts", "v3-audit", "v4-recount", "v5-success-hour-prune",
            ])
        let store = PostgresWatermarkStore(
            client: client, url: url, policy: WatermarkPolicy(), logger: .quiet, clock: { clock.now() })
        store.ready.open()
        // Cutoff 2025-12-31T22:00:00Z (two hours before the clock): a, b (never) and d are stale, e is not.
        #expect(try await store.summary() == WatermarkSummary(total: 5, failed: 1, stale: 3))
        // And the trigger keeps them from there.
        _ = try await store.write(
            WatermarkWrite(sourceID: sid("a"), update: .success(clock.now(), records: 1)))
        try await store.delete(sid("c"), precondition: nil, leaseToken: nil)
        #expect(try await store.summary() == WatermarkSummary(total: 4, failed: 1, stale: 2))
        // The hours a and c left hold no source: their rows are gone, not kept at 0 (scrapes sum every row).
        #expect(try await emptySuccessHours(client) == 0)
    }

    /// A database whose trigger kept emptied hours at 0 (before v5) loses those rows when it is migrated.
    @Test("a PostgreSQL database's emptied success hours are removed by its migration")
    func postgresEmptySuccessHoursPruned() async throws {
        let (client, _) = try await PostgresDatabases.newDatabase()
        var upToV4 = PostgresSchema.migrations
        upToV4.list = Array(upToV4.list.prefix(4))
        try await upToV4.apply(client, logger: .quiet)
        try await client.query(v1Insert("a", "2025-12-31T20:10:00.000000000Z"))
        try await client.query(
            "UPDATE watermark SET last_successful_timestamp = '2025-12-31T23:10:00.000000000Z' WHERE source_id = 'a'")
        #expect(try await emptySuccessHours(client) == 1)
        #expect(try await PostgresSchema.migrate(client, logger: .quiet) == ["v5-success-hour-prune"])
        #expect(try await emptySuccessHours(client) == 0)
    }

    private func emptySuccessHours(_ client: PostgresClient) async throws -> Int {
        try await client.query("SELECT count(*)::int FROM success_hour WHERE sources = 0").decode(Int.self)
            .first { _ in true } ?? -1
    }

    /// A replica of the version before the counts (a rolling upgrade) commits a write while another migrates: the
    /// write is counted, whenever it lands. Here it is in flight when the migration starts, so v2 counts the rows
    /// without it and then waits for it to create its triggers; the recount (v4) takes it.
    @Test("a PostgreSQL write committed while the counts are first taken is counted")
    func postgresCountsTakeAWriteOfTheVersionBefore() async throws {
        let (client, url) = try await PostgresDatabases.newDatabase()
        try await migrateToV1(client)
        try await client.query(v1Insert("a", "2025-12-31T23:30:00.000000000Z"))
        let applied = try await withThrowingTaskGroup(of: [String].self) { group in
            try await client.withTransaction(logger: .quiet) { connection in
                try await connection.query(v1Insert("b", nil), logger: .quiet)
                group.addTask { try await PostgresSchema.migrate(client, logger: .quiet) }
                // The migration has counted and now waits for this transaction's lock on the table.
                struct NeverWaited: Error {}
                let waiting: PostgresQuery = """
                    SELECT count(*)::int FROM pg_locks
                    WHERE NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                    """
                let deadline = ContinuousClock.now + .seconds(10)
                while try await client.query(waiting).decode(Int.self).first(where: { _ in true }) == 0 {
                    guard ContinuousClock.now < deadline else { throw NeverWaited() }
                    try await Task.sleep(for: .milliseconds(5))
                }
            }
            return try await group.next() ?? []
        }
        #expect(applied == ["v2-counts", "v3-audit", "v4-recount", "v5-success-hour-prune"])
        let store = PostgresWatermarkStore(
            client: client, url: url, policy: WatermarkPolicy(), logger: .quiet, clock: { clock.now() })
        store.ready.open()
        // Cutoff 2025-12-31T22:00:00Z: b (never succeeded) is stale, a is not.
        #expect(try await store.summary() == WatermarkSummary(total: 2, failed: 1, stale: 1))
    }

    /// A migration waits for a table's lock 5 s at most: queued behind a long transaction (a nightly pg_dump, a
    /// report; here one holding a lock a VACUUM takes), its request held every reader or writer of the table on every
    /// replica behind it for as long. The start fails, and the next one migrates. The recount (v4) bounds its own
    /// wait; every migration's statements are bound by `apply` (v3's ALTER TABLE waited for ever).
    @Test(
        "a PostgreSQL migration gives up on a table lock after a bounded wait",
        arguments: [(3, "watermark", "v4-recount"), (2, "watermark_run", "v3-audit")])
    func postgresMigrationWaitsForItsLockBoundedly(applied: Int, table: String, next: String) async throws {
        let (client, _) = try await PostgresDatabases.newDatabase()
        var before = PostgresSchema.migrations
        before.list = Array(before.list.prefix(applied))
        try await before.apply(client, logger: .quiet)
        // A transaction holds the lock until `release` opens; the migration runs meanwhile. Twenty seconds without
        // its answer fail the test, and the lock is let go either way, so nothing hangs.
        let (locked, release) = (AsyncStream<Void>.makeStream(), AsyncStream<Void>.makeStream())
        let outcome = try await withThrowingTaskGroup(of: String?.self) { group in
            group.addTask {
                try await client.withTransaction(logger: .quiet) { connection in
                    try await connection.query(
                        "LOCK TABLE \(unescaped: table) IN SHARE UPDATE EXCLUSIVE MODE", logger: .quiet)
                    locked.continuation.finish()
                    for await _ in release.stream {}
                }
                return nil
            }
            for await _ in locked.stream {}
            // A migration that waits for ever waits for this test's lock: let go of it then, or nothing ends.
            let migrated = await answer(unblock: { release.continuation.finish() }) {
                do {
                    return "applied \(try await PostgresSchema.migrate(client, logger: .quiet))"
                } catch {
                    return "refused: \(String(reflecting: error))"
                }
            }
            release.continuation.finish()
            try await group.waitForAll()
            return migrated
        }
        // SQLSTATE 55P03, lock_not_available (the message's text depends on the server's language).
        #expect(outcome.hasPrefix("refused") && outcome.contains("55P03"), "\(outcome)")
        #expect(try await PostgresSchema.migrate(client, logger: .quiet).first == next)
    }

    /// Applies PostgreSQL's first migration only: a database of the version before the counts.
    private func migrateToV1(_ client: PostgresClient) async throws {
        var first = PostgresSchema.migrations
        first.list = Array(first.list.prefix(1))
        try await first.apply(client, logger: .quiet)
    }

    /// A row as the version before the counts writes it (failed when it never succeeded).
    private func v1Insert(_ id: String, _ last: String?) -> PostgresQuery {
        """
        INSERT INTO watermark (source_id, last_successful_timestamp, last_run_timestamp, status,
            records_collected, version, consecutive_failures, created_at)
        VALUES (\(id), \(last), '2025-12-31T23:30:00.000000000Z', \(last == nil ? "failed" : "success"), 0, 1, 0,
            '2025-12-31T00:00:00.000000000Z')
        """
    }

    /// A write answered 503 at its deadline changes nothing, even when its transaction was only waiting and could go
    /// on once the wait ends: here it waits for the source's lock, held by another session past the deadline. The
    /// deadline cancels it, and the cancelled transaction rolls back rather than committing after its 503 (which would
    /// make a client's retry of the refused write apply it twice).
    @Test("a PostgreSQL write answered 503 at its deadline is not applied afterwards")
    func postgresWriteRefusedAtItsDeadlineChangesNothing() async throws {
        let (client, url) = try await PostgresDatabases.newDatabase()
        try await PostgresSchema.migrate(client, logger: .quiet)
        let store = PostgresWatermarkStore(
            client: client, url: url, policy: WatermarkPolicy(), logger: .quiet, clock: { clock.now() })
        store.ready.open()
        let source = try sid("held")
        let lock: PostgresQuery = "SELECT pg_advisory_xact_lock(hashtextextended(\(source.rawValue), 0))"
        try await client.withTransaction(logger: .quiet) { connection in
            try await connection.query(lock, logger: .quiet)
            let code = await refusal {
                _ = try await store.write(WatermarkWrite(sourceID: source, update: .success(clock.now(), records: 1)))
            }
            #expect(code == "database_unavailable")
        }
        // The lock is free: the write's transaction runs on. Taking the lock again waits until it has ended.
        try await client.withTransaction(logger: .quiet) { connection in
            try await connection.query(lock, logger: .quiet)
        }
        #expect(try await store.watermark(for: source) == nil)
        #expect(await refusal { _ = try await store.history(for: source, limit: 10) } == "watermark_not_found")
    }
}
