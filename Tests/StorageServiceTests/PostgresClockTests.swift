import Foundation
import PostgresNIO
import PostgresSupport
import TestSupport
import Testing
import WatermarkCore
import WatermarkStores

@testable import StorageService

/// Replicas on PostgreSQL read the database's clock, not their own: with each replica's clock, one running a
/// minute ahead found a lease expired that the others held live and granted it again, so two collectors ran one
/// source. Shown on a database whose `clock_timestamp()` runs an hour behind this machine (a function of that name
/// in a schema searched before `pg_catalog`): every instant the store reckons with follows it.
@Suite("PostgreSQL clock", .postgres)
struct PostgresClockTests {
    @Test("leases, runs and the future are reckoned by PostgreSQL's clock")
    func theDatabaseClockRules() async throws {
        let (admin, url) = try await PostgresDatabases.newDatabase()
        try await admin.query("CREATE SCHEMA behind")
        try await admin.query(
            """
            CREATE FUNCTION behind.clock_timestamp() RETURNS timestamptz LANGUAGE sql
            AS 'SELECT pg_catalog.clock_timestamp() - interval ''1 hour'''
            """)
        try await admin.query("ALTER DATABASE \(unescaped: url.database) SET search_path = behind, pg_catalog, public")
        // A client opened after the change: its sessions search `behind` first.
        let client = try PostgresDatabases.client(url)
        try await PostgresSchema.migrate(client, logger: .quiet)
        let store = PostgresWatermarkStore(client: client, url: url, policy: WatermarkPolicy(), logger: .quiet)
        store.ready.open()
        let source = try SourceID("feed")
        let hourBehind = Timestamp.now().adding(.zero - .seconds(3600))

        // Granted for a minute of the database's time: an hour before this machine's now, yet live.
        let lease = try await store.acquireLease(for: source, owner: "replica-a", ttl: .seconds(60))
        let expiry = lease.expiresAt.duration(since: hourBehind)
        #expect(expiry > .seconds(50) && expiry < .seconds(120), "expires \(lease.expiresAt), \(hourBehind)")
        #expect(try await store.lease(for: source)?.fencingToken == lease.fencingToken)

        let update = { (mark: Timestamp) in
            WatermarkWrite(
                sourceID: source,
                update: WatermarkUpdate(timestamp: mark, status: .success, errorMessage: nil, recordsCollected: 1),
                leaseToken: lease.fencingToken)
        }
        let written = try await store.write(update(hourBehind.adding(.zero - .seconds(10)))).watermark
        let run = written.lastRunTimestamp.duration(since: hourBehind)
        #expect(run > .seconds(-10) && run < .seconds(60), "run at \(written.lastRunTimestamp), \(hourBehind)")
        // This machine's now is an hour in the database's future.
        #expect(await refusal { _ = try await store.write(update(Timestamp.now())) } == "timestamp_in_future")
    }
}
