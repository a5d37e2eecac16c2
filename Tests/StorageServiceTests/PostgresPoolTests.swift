import PostgresNIO
import PostgresSupport
import TestSupport
import Testing

@testable import StorageService

/// The pool a PostgreSQL-backed process runs (`PostgresDatabase`): every connection opened at start and held, no
/// keep-alive, so that handing a connection back to the pool starts no timer (see `clientConfiguration`).
@Suite("PostgreSQL connection pool", .postgres)
struct PostgresPoolTests {
    @Test("the pool's minimum is its maximum and it runs no keep-alive")
    func configuration() throws {
        let url = try PostgresURL("postgres://wm:secret@db:5432/watermarks?sslmode=disable")
        let options = PostgresDatabase.clientConfiguration(url: url, maximumConnections: 7).options
        #expect(options.maximumConnections == 7)
        #expect(options.minimumConnections == 7)
        #expect(options.keepAliveBehavior == nil)
    }

    @Test("a database service opens all of its pool's connections at start")
    func opensItsConnectionsAtStart() async throws {
        let (_, url) = try await PostgresDatabases.newDatabase()
        let database = PostgresDatabase(
            url: url, migrations: PostgresSchema.migrations, maximumConnections: 3, logger: .quiet)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await database.run() }
            try await database.ready.wait()
            // Nothing uses the database after its migrations: the three sessions are the pool's own minimum.
            let deadline = ContinuousClock.now + .seconds(10)
            var sessions = try await PostgresDatabases.sessions(on: url.database)
            while sessions != 3, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
                sessions = try await PostgresDatabases.sessions(on: url.database)
            }
            #expect(sessions == 3)
            group.cancelAll()
        }
    }
}
