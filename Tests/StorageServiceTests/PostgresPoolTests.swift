import NIOConcurrencyHelpers
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
        let options = PostgresDatabase.clientConfiguration(url: url, maximumConnections: 7, sessionTimeout: .seconds(7))
            .options
        #expect(options.maximumConnections == 7)
        #expect(options.minimumConnections == 0)
        #expect(options.keepAliveBehavior == nil)
        #expect(options.connectionIdleTimeout == .seconds(10))
    }

    @Test("a database service closes the connections a burst opened once they are unused for the idle timeout")
    func closesIdleConnections() async throws {
        try await Self.withRunningDatabase(sessionTimeout: .seconds(7)) { database, url in
            // Three operations hold three connections at once: each keeps its own until all three hold one (three
            // queries sent together could share two connections on a loaded machine, one finishing first).
            let holding = NIOLockedValueBox(0)
            try await withThrowingTaskGroup(of: Void.self) { burst in
                for _ in 0..<3 {
                    burst.addTask {
                        try await database.client.withConnection { connection in
                            holding.withLockedValue { $0 += 1 }
                            let deadline = ContinuousClock.now + .seconds(20)
                            while holding.withLockedValue({ $0 }) < 3, ContinuousClock.now < deadline {
                                try await Task.sleep(for: .milliseconds(10))
                            }
                            try await connection.query("SELECT 1", logger: .quiet)
                        }
                    }
                }
                try await burst.waitForAll()
            }
            #expect(holding.withLockedValue { $0 } == 3)
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
        }
    }

    /// A database that stores text in a single-byte encoding is refused at start, saying what to do: it answered
    /// updates with text outside that encoding (a feed's error message) with 503 for ever.
    @Test("a database that cannot store any text is refused at start, naming its encoding")
    func aDatabaseNotInUTF8IsRefused() async throws {
        let (_, url) = try await PostgresDatabases.newDatabase(encoding: "LATIN1")
        let database = PostgresDatabase(
            url: url, migrations: PostgresSchema.migrations, maximumConnections: 2, sessionTimeout: .seconds(5),
            logger: .quiet)
        // A database it takes runs until shutdown: 20 s without an error is a failure, not a hang.
        let outcome = await answer {
            do {
                try await database.run()
                return "ran"
            } catch {
                return "\(error)"
            }
        }
        #expect(outcome.contains("stores text as LATIN1") && outcome.contains("ENCODING 'UTF8'"), "\(outcome)")
    }

    /// A new database served by a `PostgresDatabase` of 3 connections, migrated, for `body`; stopped after it.
    static func withRunningDatabase(
        sessionTimeout: Duration, _ body: @Sendable (PostgresSupport.PostgresDatabase, PostgresURL) async throws -> Void
    ) async throws {
        let (_, url) = try await PostgresDatabases.newDatabase()
        let database = PostgresDatabase(
            url: url, migrations: PostgresSchema.migrations, maximumConnections: 3, sessionTimeout: sessionTimeout,
            logger: .quiet)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await database.run() }
            defer { group.cancelAll() }
            try await database.ready.wait()
            try await body(database, url)
        }
    }

    /// A statement waiting for a lock, and a transaction left idle, end on the server a little after the callers'
    /// deadline: a caller that gives up only cancels its task, and the query went on waiting with the pool's
    /// connection (or a frozen client's transaction held its locks) until one stuck lock parked every connection.
    @Test("PostgreSQL ends a lock wait and an idle transaction at the session timeout")
    func sessionTimeout() async throws {
        try await Self.withRunningDatabase(sessionTimeout: .seconds(1)) { database, _ in
            let idle = try await database.client.query("SHOW idle_in_transaction_session_timeout").collect()
            #expect(try idle.first?.decode(String.self) == "1s")
            try await database.client.withConnection { holder in
                _ = try await holder.query("SELECT pg_advisory_lock(4242)", logger: .quiet).collect()
                let outcome = try await withThrowingTaskGroup(of: String.self) { race in
                    race.addTask {
                        do {
                            _ = try await database.client.query("SELECT pg_advisory_lock(4242)").collect()
                            return "granted"
                        } catch let error as PSQLError {
                            return error.serverInfo?[.sqlState] ?? "\(error)"
                        }
                    }
                    race.addTask {
                        try await Task.sleep(for: .seconds(20))
                        return "still waiting after 20 s"
                    }
                    let first = try await race.next() ?? ""
                    // A waiter left behind ends once the lock is let go.
                    _ = try await holder.query("SELECT pg_advisory_unlock(4242)", logger: .quiet).collect()
                    race.cancelAll()
                    return first
                }
                #expect(outcome == "55P03", "\(outcome)")  // lock_not_available
            }
        }
    }
}
