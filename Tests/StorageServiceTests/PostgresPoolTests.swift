import PostgresNIO
import PostgresSupport
import TestSupport
import Testing

@testable import StorageService

/// The pool a PostgreSQL-backed process runs (`PostgresDatabase`): connections opened on demand and closed after
/// `idleConnectionTimeout` unused, no keep-alive, so that what the pool's timers hold stays small (see
/// `clientConfiguration`).
@Suite("PostgreSQL connection pool", .postgres)
struct PostgresPoolTests {
    @Test("the pool opens connections on demand, runs no keep-alive and closes a connection unused for 10 s")
    func configuration() throws {
        let url = try PostgresURL("postgres://wm:secret@db:5432/watermarks?sslmode=disable")
        let options = PostgresDatabase.clientConfiguration(url: url, maximumConnections: 7).options
        #expect(options.maximumConnections == 7)
        #expect(options.minimumConnections == 0)
        #expect(options.keepAliveBehavior == nil)
        #expect(options.connectionIdleTimeout == .seconds(10))
    }

    @Test("a database service closes the connections a burst opened once they are unused for the idle timeout")
    func closesIdleConnections() async throws {
        let (_, url) = try await PostgresDatabases.newDatabase()
        let database = PostgresDatabase(
            url: url, migrations: PostgresSchema.migrations, maximumConnections: 3, logger: .quiet)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await database.run() }
            try await database.ready.wait()
            // Three queries at once hold three connections for a moment.
            try await withThrowingTaskGroup(of: Void.self) { burst in
                for _ in 0..<3 {
                    burst.addTask { try await database.client.query("SELECT pg_sleep(0.3)") }
                }
                try await burst.waitForAll()
            }
            let afterBurst = try await PostgresDatabases.sessions(on: url.database)
            #expect(afterBurst == 3)
            let closed = ContinuousClock.now
            let deadline = closed + .seconds(30)
            var sessions = afterBurst
            while sessions != 0, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
                sessions = try await PostgresDatabases.sessions(on: url.database)
            }
            #expect(sessions == 0, "the pool did not close its unused connections within 30 s")
            // Not before they were unused for the timeout (the last query ended just before `closed`).
            #expect(ContinuousClock.now - closed >= PostgresDatabase.idleConnectionTimeout - .seconds(1))
            group.cancelAll()
        }
    }
}
