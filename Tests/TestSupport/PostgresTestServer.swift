import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A real PostgreSQL (Debian's packages, which `scripts/install-deps.sh` installs) for the tests that need one:
/// `initdb` into a temporary folder and `pg_ctl` on a free port on 127.0.0.1, password authentication over TCP.
/// `initdb` and `pg_ctl` refuse to run as root, so as root (CI) the server runs as the unprivileged user
/// `watermark-pg` (created here when missing). `stop()` stops the server and removes its folder; call it in a
/// `defer`, so a failing test stops it too.
package final class PostgresTestServer: Sendable {
    package static let user = "postgres"
    package static let password = "test-pw-Zq8"
    static let systemUser = "watermark-pg"

    package let port: Int
    package let directory: String
    private let binaries: String
    private let runAs: String?

    package struct Failure: Error, CustomStringConvertible {
        package let description: String
        package init(description: String) { self.description = description }
    }

    private init(port: Int, directory: String, binaries: String, runAs: String?) {
        self.port = port
        self.directory = directory
        self.binaries = binaries
        self.runAs = runAs
    }

    /// `postgres://postgres:<password>@127.0.0.1:<port>/<database>` (TLS off: loopback only).
    package func url(database: String = "postgres") -> String {
        "postgres://\(Self.user):\(Self.password)@127.0.0.1:\(port)/\(database)?sslmode=disable"
    }

    /// Initialises a cluster and starts it; throws with the tool's output when that fails, having stopped what it
    /// started and removed its folder. A port found free may be taken before the server binds it (the other suites
    /// open connections meanwhile): the start is tried again on another port, three times at most.
    package static func start() throws -> PostgresTestServer {
        let binaries = try findBinaries()
        let root = geteuid() == 0
        if root { try ensureSystemUser() }
        var attempt = 0
        while true {
            attempt += 1
            let directory = NSTemporaryDirectory() + "watermark-pg-\(UUID().uuidString.prefix(8))"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let server = PostgresTestServer(
                port: try freeTCPPort(), directory: directory, binaries: binaries, runAs: root ? systemUser : nil)
            do {
                try Data(password.utf8).write(to: URL(fileURLWithPath: directory + "/pwfile"))
                if root { _ = try runToEnd(["chown", "-R", systemUser, directory]) }
                try server.tool(
                    "initdb", "-D", directory + "/data", "-U", user, "--pwfile=" + directory + "/pwfile",
                    "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
                try server.startServer()
                return server
            } catch {
                let log = (try? String(contentsOfFile: directory + "/server.log", encoding: .utf8)) ?? ""
                server.stop()  // a postmaster a timed-out start left running, and the folder
                guard attempt < 3, log.contains("could not bind") else { throw error }
            }
        }
    }

    /// `start()` on a thread of its own: initdb and pg_ctl take seconds, which must not hold a thread of the
    /// concurrency pool that every test shares.
    package static func started() async throws -> PostgresTestServer {
        try await offPool { try start() }
    }

    /// `stopServer()` off the concurrency pool.
    package func stoppedServer() async throws { try await Self.offPool { try self.stopServer() } }

    /// `startServer()` off the concurrency pool.
    package func restartedServer() async throws { try await Self.offPool { try self.startServer() } }

    /// `stop()` off the concurrency pool.
    package func stopped() async { try? await Self.offPool { self.stop() } }

    private static func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
        }
    }

    /// Creates an empty database (each store under test gets its own).
    package func createDatabase(_ name: String) throws {
        try tool("psql", "-h", directory, "-p", "\(port)", "-U", Self.user, "-c", "CREATE DATABASE \"\(name)\"")
    }

    /// The rows `sql` returns in `database`, one line each, columns separated by `|` (psql's unaligned output).
    /// psql runs in the server's folder: run as the unprivileged user from a folder that user may not enter (a
    /// clone under a mode-700 temporary folder), it printed "could not change directory" among the rows.
    package func query(_ sql: String, database: String = "postgres") throws -> [String] {
        let out = directory + "/query-\(UUID().uuidString.prefix(8)).out"
        defer { try? FileManager.default.removeItem(atPath: out) }
        let user = runAs.map { ["/usr/sbin/runuser", "-u", $0, "--"] } ?? []
        let (status, output) = try runToEnd(
            user + [
                binaries + "/psql", "-h", directory, "-p", "\(port)", "-U", Self.user, "-d", database, "-At", "-c", sql,
            ],
            outputFile: out, currentDirectory: directory)
        guard status == 0 else { throw Failure(description: "psql failed (\(status)): \(output)") }
        return output.split(separator: "\n").map(String.init)
    }

    /// Stops the server at once (fast shutdown; SIGKILL of PostgreSQL is `kill()`), keeping its folder.
    package func stopServer(mode: String = "fast") throws {
        try tool("pg_ctl", "-D", directory + "/data", "-m", mode, "-w", "stop")
    }

    /// Starts it again on the same port after `stopServer()`.
    package func startServer() throws {
        try tool(
            "pg_ctl", "-D", directory + "/data", "-l", directory + "/server.log", "-w", "-t", "60", "-o",
            "-p \(port) -h 127.0.0.1 -k \(directory) -c max_connections=200", "start")
    }

    /// Stops the server and removes its folder; safe to call when it is not running.
    package func stop() {
        _ = try? tool("pg_ctl", "-D", directory + "/data", "-m", "immediate", "-w", "stop")
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func tool(_ name: String, _ arguments: String...) throws {
        let user = runAs.map { ["/usr/sbin/runuser", "-u", $0, "--"] } ?? []
        // pg_ctl leaves the server running, which would inherit a pipe: its output goes to a file.
        let (status, output) = try runToEnd(
            user + [binaries + "/" + name] + arguments, outputFile: directory + "/\(name).out",
            currentDirectory: directory)
        guard status == 0 else { throw Failure(description: "\(name) failed (\(status)): \(output)") }
    }

    private static func findBinaries() throws -> String {
        let root = "/usr/lib/postgresql"
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        for version in versions.sorted(by: >)
        where FileManager.default.fileExists(atPath: "\(root)/\(version)/bin/initdb") {
            return "\(root)/\(version)/bin"
        }
        throw Failure(
            description: "PostgreSQL is not installed (no \(root)/*/bin/initdb): run scripts/install-deps.sh "
                + "or apt-get install postgresql")
    }

    private static func ensureSystemUser() throws {
        if (try? runToEnd(["id", "-u", systemUser]))?.status == 0 { return }
        let (status, output) = try runToEnd([
            "/usr/sbin/useradd", "--system", "--no-create-home", "--shell", "/bin/false", systemUser,
        ])
        guard status == 0 || (try? runToEnd(["id", "-u", systemUser]))?.status == 0 else {
            throw Failure(description: "cannot create the user \(systemUser) that PostgreSQL runs as: \(output)")
        }
    }

}
