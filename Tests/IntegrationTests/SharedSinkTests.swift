import Foundation
import TestSupport
import Testing

/// `SINK_URL`: collection processes with their own data folders write one PostgreSQL table, and a record any of
/// them already wrote is not written again by another.
@Suite("Shared PostgreSQL sink, real processes")
struct SharedSinkTests {
    /// `count` indicators in one NDJSON file of `folder`, ids from `first`.
    static func drop(_ name: String, in folder: String, first: Int, count: Int) throws {
        let lines = (first..<(first + count)).map { number in
            #"{"type":"indicator","id":"indicator--\#(number)","modified":"2026-11-26T10:00:\#(String(format: "%02d", number % 60)).000Z"}"#
        }
        try (lines.joined(separator: "\n") + "\n").write(toFile: folder + "/" + name, atomically: true, encoding: .utf8)
    }

    @Test func twoProcessesWithTheirOwnFoldersStoreEachRecordOnceInTheSharedTable() async throws {
        try await PostgresServiceTests.withServer { server in try await Self.twoProcesses(server) }
    }

    static func twoProcesses(_ server: PostgresTestServer) async throws {
        try await withStorageService { storage in
            let storageURL = "http://127.0.0.1:\(storage.port)"
            let first = try CollectionSetup(sourcesJSON: "{}")
            defer { first.remove() }
            let folder = try CollectionSetup.dropFolder("drop", in: first)
            // The second process reads the same drop folder through a sources file and data folder of its own.
            let second = try CollectionSetup(
                sourcesJSON: try String(contentsOfFile: first.sourcesPath, encoding: .utf8))
            defer { second.remove() }
            try Self.drop("a.ndjson", in: folder, first: 0, count: 40)
            try Self.drop("b.ndjson", in: folder, first: 30, count: 20)  // ten of them again

            let sink = ["SINK_URL": server.url(), "REQUIRE_LEASE": "true"]
            let a = try first.startOnce(
                storageURL: storageURL, extra: sink.merging(["INSTANCE_ID": "replica-a"]) { $1 })
            #expect(try await a.waitForExit(timeout: .seconds(90)) == 0, "\(a.log)")
            #expect(a.log.contains("drop success records=50"), "\(a.log)")
            let b = try second.startOnce(
                storageURL: storageURL, extra: sink.merging(["INSTANCE_ID": "replica-b"]) { $1 })
            #expect(try await b.waitForExit(timeout: .seconds(90)) == 0, "\(b.log)")
            #expect(b.log.contains("drop success records=0"), "\(b.log)")

            try Self.drop("c.ndjson", in: folder, first: 45, count: 15)  // five old, ten new
            let again = try second.startOnce(
                storageURL: storageURL, extra: sink.merging(["INSTANCE_ID": "replica-b"]) { $1 })
            #expect(try await again.waitForExit(timeout: .seconds(90)) == 0, "\(again.log)")
            #expect(again.log.contains("drop success records=10"), "\(again.log)")

            let counts = try server.query("SELECT count(*), count(DISTINCT (source_id, id, version)) FROM records")
            #expect(counts == ["60|60"])
            // The files sink was not used, and the password is in no log.
            #expect(!FileManager.default.fileExists(atPath: first.dataPath + "/drop"))
            for log in [a.log, b.log, again.log] {
                #expect(log.contains("sink=postgres://postgres@127.0.0.1:"))
                #expect(!log.contains(PostgresTestServer.password))
            }
        }
    }
}
