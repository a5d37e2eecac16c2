import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import TestSupport
import Testing

/// `watermarkctl` against a live storage service (with a token), as an operator runs it.
@Suite("watermarkctl")
struct WatermarkCtlTests {
    /// Runs `watermarkctl` with `arguments` (and `stdin`, a file's path, as its standard input).
    static func ctl(
        _ arguments: [String], storage: StorageServiceHarness?, token: String? = "ctl-token",
        stdin: String = "/dev/null"
    ) throws -> (status: Int32, output: String) {
        let binary = ServiceProcess.binDirectory.appendingPathComponent("watermarkctl").path
        let quoted = ([binary] + arguments).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }
        var environment = ProcessInfo.processInfo.environment
        environment["STORAGE_SERVICE_URL"] = storage.map { "http://127.0.0.1:\($0.port)" } ?? "http://127.0.0.1:9"
        environment["STORAGE_API_TOKEN"] = token
        return try runToEnd(
            ["/bin/sh", "-c", quoted.joined(separator: " ") + " < '\(stdin)' 2>&1"], environment: environment)
    }

    /// A URL holding a user and password is refused (exit 2) and never printed whole, as the library refuses it for
    /// the services: watermarkctl quoted it back in its errors ("cannot reach ... at http://admin:s3cret@...").
    @Test func aStorageURLWithAPasswordIsRefusedWithoutShowingIt() throws {
        for url in ["http://admin:s3cret@127.0.0.1:9", "postgres://admin:s3cret@db:5432/x"] {
            let result = try Self.ctl(["list", "--url", url], storage: nil)
            #expect(result.status == 2, "\(result.output)")
            #expect(!result.output.contains("s3cret"), "\(result.output)")
            #expect(result.output.contains("STORAGE_SERVICE_URL"), "\(result.output)")
        }
    }

    /// An error message quoted from a feed may hold a line break or a terminal escape sequence (the storage keeps it as
    /// sent): the tables show them as U+FFFD, one row per source, nothing reaching the terminal as a control.
    @Test func tablesShowNoControlCharacters() async throws {
        try await withStorageService(
            environment: ["STORAGE_API_TOKEN": "ctl-token"], headers: [("Authorization", "Bearer ctl-token")]
        ) { storage in
            let body = #"{"status":"failed","error_message":"feed said \u001b[2J\u001b]0;owned\u0007\nline two"}"#
            #expect(try await storage.http.send(.PUT, "/api/v1/watermarks/evil", json: body).status == 201)
            for arguments in [["list"], ["history", "evil"]] {
                let result = try Self.ctl(arguments, storage: storage)
                #expect(result.status == 0, "\(result.output)")
                #expect(!result.output.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x07 })
                #expect(result.output.split(separator: "\n").count == 2, "\(result.output)")
                #expect(result.output.contains("\u{FFFD}[2J"), "\(result.output)")
            }
        }
    }

    @Test func setGetListHistoryCopyResetAndTheirRefusals() async throws {
        try await withStorageService(environment: ["STORAGE_API_TOKEN": "ctl-token"]) { storage in
            func ctl(_ arguments: String...) throws -> (status: Int32, output: String) {
                try Self.ctl(arguments, storage: storage)
            }
            // A source with no watermark is refused unless --create (a mistyped id was created).
            var result = try ctl("set", "alpha", "2026-12-01T00:00:00Z")
            #expect(result.status == 1 && result.output.contains("pass --create"), "\(result.output)")
            #expect(try ctl("list", "--output", "json").output == "[]\n")
            result = try ctl("set", "alpha", "2026-12-01T00:00:00Z", "--create")
            #expect(result.status == 0 && result.output.contains("alpha: watermark 2026-12-01T00:00:00Z, version 1"))
            #expect(try ctl("set", "beta", "2026-11-01T12:00:00.5Z", "--create").status == 0)

            // A regression is refused (exit 1, the reason said), and accepted with --force.
            result = try ctl("set", "alpha", "2026-11-30T00:00:00Z")
            #expect(result.status == 1 && result.output.contains("regression"), "\(result.output)")
            #expect(result.output.contains("--force") && !result.output.contains("?force=true"), "\(result.output)")
            #expect(try ctl("set", "alpha", "2026-11-30T00:00:00Z", "--force").status == 0)

            // The table: aligned, with ages; the JSON: the service's own bodies.
            result = try ctl("list")
            let lines = result.output.split(separator: "\n")
            #expect(result.status == 0 && lines.count == 3, "\(result.output)")
            #expect(
                lines.first?.hasPrefix("SOURCE") == true && lines[1].hasPrefix("alpha") && lines[2].hasPrefix("beta"))
            #expect(lines[1].contains("2026-11-30T00:00:00Z") && lines[1].contains("d") && lines[1].contains(" ago"))
            let columns = lines.map {
                $0.range(of: "STATUS")?.lowerBound.utf16Offset(in: $0)
                    ?? $0.range(of: "success")?.lowerBound.utf16Offset(in: $0)
            }
            #expect(Set(columns).count == 1, "columns aligned: \(result.output)")
            result = try ctl("list", "--output", "json")
            let listed = try #require(
                try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [[String: Any]])
            #expect(listed.map { $0["source_id"] as? String } == ["alpha", "beta"])
            #expect(listed.first?["version"] as? Int == 2)
            result = try ctl("get", "beta", "--output", "json")
            #expect(result.output.contains(#""last_successful_timestamp":"2026-11-01T12:00:00.5Z""#))
            #expect(try ctl("list", "--stale-after", "1h", "--output", "json").output.contains("beta"))
            #expect(try ctl("list", "--status", "failed", "--output", "json").output == "[]\n")

            result = try ctl("history", "alpha")
            #expect(result.status == 0 && result.output.split(separator: "\n").count == 3, "\(result.output)")

            result = try ctl("copy", "alpha", "gamma")
            #expect(result.status == 0 && result.output.contains("gamma: watermark 2026-11-30T00:00:00Z (from alpha)"))

            // reset asks; with no terminal and no --yes it refuses and changes nothing.
            result = try ctl("reset", "gamma")
            #expect(result.status == 2 && result.output.contains("--yes"), "\(result.output)")
            #expect(try ctl("get", "gamma").status == 0)
            #expect(try ctl("reset", "gamma", "--yes").status == 0)
            result = try ctl("get", "gamma")
            #expect(result.status == 1 && result.output.contains("no watermark"), "\(result.output)")

            // What to fix is named: a bad id, a bad timestamp, a bad duration, a wrong token, no storage.
            #expect(try ctl("get", "no spaces").status == 2)
            #expect(try ctl("set", "alpha", "yesterday").output.contains("RFC 3339"))
            #expect(try ctl("list", "--stale-after", "soon").status == 2)
            // Too long a duration is a usage error too, also one whose seconds overflow (the tool crashed).
            for tooLong in ["40000d", "200000000000000d"] {
                result = try ctl("list", "--stale-after", tooLong)
                #expect(result.status == 2 && result.output.contains("100 years"), "\(tooLong): \(result.output)")
            }
            result = try Self.ctl(["list"], storage: storage, token: "zq-not-the-token-91")
            #expect(result.status == 3 && result.output.contains("STORAGE_API_TOKEN"), "\(result.output)")
            #expect(!result.output.contains("zq-not-the-token-91"))
            result = try Self.ctl(["list"], storage: nil)
            #expect(result.status == 3 && result.output.contains("cannot reach"), "\(result.output)")
        }
    }

    @Test func reasonsAndActorsReachTheHistoryAndTheLeaseIsShown() async throws {
        let tokens = "collector:col-token-1,alice:ctl-token"
        try await withStorageService(environment: ["STORAGE_API_TOKEN": tokens]) { storage in
            func ctl(_ arguments: String...) throws -> (status: Int32, output: String) {
                try Self.ctl(arguments, storage: storage)
            }
            #expect(try ctl("set", "feed", "2026-12-01T00:00:00Z", "--create", "--reason", "first load").status == 0)
            #expect(try ctl("reset", "feed", "--yes", "--reason", "bad batch: Zoë's replay").status == 0)
            var result = try ctl("history", "feed", "--output", "json")
            let runs = try #require(
                try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [[String: Any]])
            #expect(runs.map { $0["status"] as? String } == ["reset", "success"], "\(result.output)")
            #expect(runs.map { $0["actor"] as? String } == ["alice", "alice"])
            #expect(runs.map { $0["reason"] as? String } == ["bad batch: Zoë's replay", "first load"])
            result = try ctl("history", "feed")
            #expect(result.output.contains("ACTOR") && result.output.contains("bad batch: Zoë's replay"))

            // No lease: exit 1, said. A lease taken by a collector: its holder, token and expiry.
            result = try ctl("lease", "feed")
            #expect(result.status == 1 && result.output.contains("no live lease"), "\(result.output)")
            let client = HTTPClient.shared
            var request = HTTPClientRequest(url: "http://127.0.0.1:\(storage.port)/api/v1/watermarks/feed/lease")
            request.method = .POST
            request.headers.add(name: "Authorization", value: "Bearer col-token-1")
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: #"{"owner":"collector-3","ttl_seconds":600}"#))
            let answer = try await client.execute(request, timeout: .seconds(10))
            #expect(answer.status == .ok)
            result = try ctl("lease", "feed")
            #expect(result.status == 0 && result.output.contains("collector-3"), "\(result.output)")
            #expect(
                result.output.contains("HOLDER")
                    && (result.output.contains("in 9m") || result.output.contains("in 10m")))
            result = try ctl("lease", "feed", "--output", "json")
            #expect(result.output.contains(#""fencing_token":1"#) && result.output.contains(#""owner":"collector-3""#))
        }
    }

    @Test func exportThenImportMovesEveryWatermarkAndRefusesRegressionsUnlessForced() async throws {
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let file = folder.path + "/watermarks.jsonl"
        try await withStorageService(
            environment: ["STORAGE_API_TOKEN": "ctl-token"], headers: [("Authorization", "Bearer ctl-token")]
        ) { source in
            for (id, mark) in [
                ("a", "2026-12-01T00:00:00Z"), ("b", "2026-12-02T00:00:00.123456789Z"), ("c", "2026-12-01T00:00:00Z"),
            ] {
                #expect(try Self.ctl(["set", id, mark, "--create"], storage: source).status == 0)
            }
            // Failing sources, one with a mark and one that never succeeded: they arrive failing.
            let failed = #"{"status":"failed","error_message":"feed down"}"#
            #expect(try await source.http.send(.PUT, "/api/v1/watermarks/c", json: failed).status == 200)
            #expect(try await source.http.send(.PUT, "/api/v1/watermarks/d", json: failed).status == 201)
            let exported = try Self.ctl(["export"], storage: source)
            #expect(exported.status == 0 && exported.output.split(separator: "\n").count == 4)
            try exported.output.write(toFile: file, atomically: true, encoding: .utf8)
        }
        try await withStorageService(environment: [
            "STORAGE_API_TOKEN": "ctl-token", "STORAGE_READ_TOKEN": "read-token",
        ]) {
            target in
            #expect(try Self.ctl(["set", "b", "2026-12-03T00:00:00Z", "--create"], storage: target).status == 0)
            var result = try Self.ctl(["import"], storage: target, stdin: file)
            #expect(result.status == 1 && result.output.contains("imported 3, refused 1"), "\(result.output)")
            #expect(result.output.contains("(b) refused"))
            result = try Self.ctl(["import", "--force"], storage: target, stdin: file)
            #expect(result.status == 0 && result.output.contains("imported 4, refused 0"), "\(result.output)")
            let b = try Self.ctl(["get", "b", "--output", "json"], storage: target).output
            #expect(b.contains(#""last_successful_timestamp":"2026-12-02T00:00:00.123456789Z""#), "\(b)")
            let c = try Self.ctl(["get", "c", "--output", "json"], storage: target).output
            #expect(c.contains(#""status":"failed""#) && c.contains(#""error_message":"feed down""#), "\(c)")
            #expect(c.contains(#""last_successful_timestamp":"2026-12-01T00:00:00Z""#), "\(c)")
            let d = try Self.ctl(["get", "d", "--output", "json"], storage: target).output
            #expect(d.contains(#""status":"failed""#) && d.contains(#""last_successful_timestamp":null"#), "\(d)")
            // A token that may only read: the token's exit code, once, not a refusal per line.
            result = try Self.ctl(["import"], storage: target, token: "read-token", stdin: file)
            #expect(result.status == 3 && result.output.contains("refused the token"), "\(result.output)")
            #expect(!result.output.contains("(a) refused"), "\(result.output)")
            try "not json\n".write(toFile: file, atomically: true, encoding: .utf8)
            result = try Self.ctl(["import"], storage: target, stdin: file)
            #expect(result.status == 2 && result.output.contains("line 1"), "\(result.output)")
        }
    }
}
