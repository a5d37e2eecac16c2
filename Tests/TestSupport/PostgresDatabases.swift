import Foundation
import Logging
import PostgresNIO
import PostgresSupport
import Testing

/// The PostgreSQL server of a suite (`.postgres` trait), and the clients its scope runs: a `PostgresClient` serves
/// queries only while its `run()` runs.
package struct PostgresDatabases: Sendable {
    @TaskLocal static var current: PostgresDatabases?

    let server: PostgresTestServer
    let clients: AsyncStream<PostgresClient>.Continuation
    /// Connected to the `postgres` database, to create the tests' databases (with SQL, not a blocking psql).
    let admin: PostgresClient

    /// A new, empty database of the suite's server and a running client of it; `encoding` (e.g. `LATIN1`) makes it
    /// store text in that encoding instead of the server's default.
    package static func newDatabase(encoding: String? = nil) async throws -> (PostgresClient, PostgresURL) {
        guard let databases = current else {
            throw PostgresTestServer.Failure(description: "a PostgreSQL database needs the suite's .postgres trait")
        }
        let name = "test_" + UUID().uuidString.prefix(8).lowercased()
        let options = encoding.map { " ENCODING '\($0)' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0" } ?? ""
        try await databases.admin.query("CREATE DATABASE \(unescaped: name)\(unescaped: options)")
        let url = try PostgresURL(databases.server.url(database: name))
        return (databases.client(url), url)
    }

    /// The sessions open on `database` of the suite's server, as PostgreSQL counts them (`pg_stat_activity`).
    package static func sessions(on database: String) async throws -> Int {
        guard let databases = current else {
            throw PostgresTestServer.Failure(description: "counting sessions needs the suite's .postgres trait")
        }
        let rows = try await databases.admin.query(
            "SELECT count(*)::int FROM pg_stat_activity WHERE datname = \(database)")
        for try await count in rows.decode(Int.self) { return count }
        return 0
    }

    /// The server processes (backends) of the client sessions open on `database`, as PostgreSQL lists them (not its
    /// own workers, such as autovacuum's).
    package static func backends(on database: String) async throws -> [Int32] {
        guard let databases = current else {
            throw PostgresTestServer.Failure(description: "listing sessions needs the suite's .postgres trait")
        }
        var pids: [Int32] = []
        let rows = try await databases.admin.query(
            "SELECT pid FROM pg_stat_activity WHERE datname = \(database) AND backend_type = 'client backend'")
        for try await pid in rows.decode(Int32.self) { pids.append(pid) }
        return pids
    }

    /// Runs `query` on the suite's server as its administrator, connected to the `postgres` database (an `ALTER
    /// DATABASE` of a test's database, say, whatever that database's own sessions may do).
    package static func administer(_ query: PostgresQuery) async throws {
        guard let databases = current else {
            throw PostgresTestServer.Failure(description: "administering needs the suite's .postgres trait")
        }
        try await databases.admin.query(query)
    }

    /// Another running client of `url` (a second replica, say).
    package static func client(_ url: PostgresURL) throws -> PostgresClient {
        guard let databases = current else {
            throw PostgresTestServer.Failure(description: "a PostgreSQL client needs the suite's .postgres trait")
        }
        return databases.client(url)
    }

    /// A running client of `url` whose pool opens `maximumConnections` at most.
    package static func client(_ url: PostgresURL, maximumConnections: Int) throws -> PostgresClient {
        guard let databases = current else {
            throw PostgresTestServer.Failure(description: "a PostgreSQL client needs the suite's .postgres trait")
        }
        return databases.client(url, maximumConnections: maximumConnections)
    }

    private func client(_ url: PostgresURL, maximumConnections: Int? = nil) -> PostgresClient {
        var configuration = url.clientConfiguration
        if let maximumConnections { configuration.options.maximumConnections = maximumConnections }
        let client = PostgresClient(configuration: configuration, backgroundLogger: .quiet)
        clients.yield(client)
        return client
    }
}

/// Starts a PostgreSQL server for the suite, runs the clients of its databases, and stops everything when the
/// suite ends, also when it fails.
package struct PostgresSuite: SuiteTrait, TestScoping {
    package var isRecursive: Bool { false }

    package func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        let server = try await PostgresTestServer.started()
        let (stream, continuation) = AsyncStream.makeStream(of: PostgresClient.self)
        let admin = PostgresClient(
            configuration: try PostgresURL(server.url()).clientConfiguration, backgroundLogger: .quiet)
        continuation.yield(admin)
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    await withDiscardingTaskGroup { running in
                        for await client in stream { running.addTask { await client.run() } }
                    }
                }
                let databases = PostgresDatabases(server: server, clients: continuation, admin: admin)
                try await PostgresDatabases.$current.withValue(databases) { try await function() }
                continuation.finish()
                group.cancelAll()
            }
        } catch {
            await server.stopped()
            throw error
        }
        await server.stopped()
    }
}

extension Trait where Self == PostgresSuite {
    /// A real PostgreSQL for the suite's databases (`PostgresDatabases.newDatabase()`).
    package static var postgres: Self { PostgresSuite() }
}
