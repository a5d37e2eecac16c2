import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import ServiceSupport
import TestSupport
import Testing
import WatermarkCore
import WatermarkStores

@testable import StorageService

/// The audit trail through the real router: who made each change (the lease owner, else the name of the token),
/// why (`X-Reason`), resets kept as runs, and the lease read back.
@Suite("Audit trail")
struct AuditTests {
    let clock = ManualClock(.at("2026-01-01T00:00:00Z"))
    static let tokens = "ci:ci-secret-1,ops:ops-secret-2"

    private func app(tokens: String? = Self.tokens) async throws -> some ApplicationProtocol {
        var configuration = StorageConfiguration()
        configuration.apiTokens = try tokens.map { try APITokens(parsing: $0) }
        configuration.readToken = tokens == nil ? nil : "read-secret"
        let store = try await StoreKind.sqlite.make(clock: clock, policy: configuration.policy)
        return try await buildApplication(configuration: configuration, store: store, logger: .quiet)
    }

    private func headers(_ token: String?, _ extra: [HTTPField.Name: String] = [:]) -> HTTPFields {
        var fields: HTTPFields = [.contentType: "application/json"]
        if let token { fields[.authorization] = "Bearer \(token)" }
        for (name, value) in extra { fields[name] = value }
        return fields
    }

    private func body(_ time: String) -> ByteBuffer {
        ByteBuffer(string: #"{"timestamp":"\#(time)","status":"success","records_collected":3}"#)
    }

    private func runs(_ client: some TestClientProtocol, _ id: String) async throws -> [[String: Any]] {
        let answer = try await client.execute(
            uri: "/api/v1/watermarks/\(id)/history", method: .get, headers: headers("read-secret"))
        let object = try JSONSerialization.jsonObject(with: Data(answer.body.readableBytesView))
        return try #require((object as? [String: Any])?["runs"] as? [[String: Any]])
    }

    @Test("each run names the token's name or the lease owner, never a token; a reset stays in the history")
    func actors() async throws {
        try await app().test(.router) { client in
            let path = "/api/v1/watermarks/feed"
            let byCI = try await client.execute(
                uri: path, method: .put, headers: headers("ci-secret-1", [.reason: "first load"]),
                body: body("2025-12-01T00:00:00Z"))
            #expect(byCI.status == .created)
            let lease = try await client.execute(
                uri: path + "/lease", method: .post, headers: headers("ops-secret-2"),
                body: ByteBuffer(string: #"{"owner":"collector-7","ttl_seconds":60}"#))
            #expect(lease.status == .ok)
            let held = try await client.execute(uri: path + "/lease", method: .get, headers: headers("read-secret"))
            let holder = try JSONSerialization.jsonObject(with: Data(held.body.readableBytesView)) as? [String: Any]
            #expect(held.status == .ok && holder?["owner"] as? String == "collector-7")
            #expect(holder?["fencing_token"] as? Int == 1)
            let byLease = try await client.execute(
                uri: path, method: .put, headers: headers("ci-secret-1", [HTTPField.Name("Lease-Token")!: "1"]),
                body: body("2025-12-02T00:00:00Z"))
            #expect(byLease.status == .ok)
            let release = try await client.execute(
                uri: path + "/lease", method: .delete,
                headers: headers("ops-secret-2", [HTTPField.Name("Lease-Token")!: "1"]))
            #expect(release.status == .noContent)
            let gone = try await client.execute(uri: path + "/lease", method: .get, headers: headers("read-secret"))
            #expect(gone.status == .notFound)
            #expect(String(buffer: gone.body).contains("lease_not_found"))
            let reset = try await client.execute(
                uri: path, method: .delete, headers: headers("ops-secret-2", [.reason: "replay%20December"]))
            #expect(reset.status == .noContent)

            let history = try await runs(client, "feed")
            #expect(history.map { $0["status"] as? String } == ["reset", "success", "success"])
            #expect(history.map { $0["actor"] as? String } == ["ops", "collector-7", "ci"])
            #expect(history.map { $0["reason"] as? String } == ["replay December", nil, "first load"])
            for run in history { #expect(!"\(run)".contains("secret")) }
            // The read token reads, and names nobody: it cannot write.
            let readWrite = try await client.execute(
                uri: path, method: .put, headers: headers("read-secret"), body: body("2025-12-03T00:00:00Z"))
            #expect(readWrite.status == .forbidden)
        }
    }

    @Test("a single token is named api; without tokens the actor is null")
    func defaultNames() async throws {
        try await app(tokens: "only-token").test(.router) { client in
            _ = try await client.execute(
                uri: "/api/v1/watermarks/one", method: .put, headers: headers("only-token"),
                body: body("2025-12-01T00:00:00Z"))
            #expect(try await runs(client, "one").first?["actor"] as? String == "api")
        }
        try await app(tokens: nil).test(.router) { client in
            _ = try await client.execute(
                uri: "/api/v1/watermarks/open", method: .put, headers: headers(nil), body: body("2025-12-01T00:00:00Z"))
            let first = try await client.execute(uri: "/api/v1/watermarks/open/history", method: .get)
            let object = try JSONSerialization.jsonObject(with: Data(first.body.readableBytesView)) as? [String: Any]
            #expect(((object?["runs"] as? [[String: Any]])?.first?["actor"]) is NSNull)
        }
    }

    @Test("X-Reason: kept as sent, or decoded when it is percent-encoded UTF-8; else 400 and nothing changes")
    func reasons() async throws {
        try await app().test(.router) { client in
            let cases: [(String, String)] = [
                ("nightly backfill", "nightly backfill"), ("50%25 done", "50% done"), ("100% sure", "100% sure"),
                ("%E2%9C%93 ok", "✓ ok"), ("%00x", "%00x"), ("%FF", "%FF"),
            ]
            for (index, (sent, kept)) in cases.enumerated() {
                let answer = try await client.execute(
                    uri: "/api/v1/watermarks/why", method: .put, headers: headers("ci-secret-1", [.reason: sent]),
                    body: body("2025-12-0\(index + 1)T00:00:00Z"))
                #expect(answer.status.code < 300, "\(sent)")
                #expect(try await runs(client, "why").first?["reason"] as? String == kept, "\(sent)")
            }
            for bad in [String(repeating: "x", count: 501), "tab\there", "caf\u{E9}"] {
                let answer = try await client.execute(
                    uri: "/api/v1/watermarks/why", method: .put, headers: headers("ci-secret-1", [.reason: bad]),
                    body: body("2025-12-31T00:00:00Z"))
                #expect(answer.status == .badRequest, "\(bad.prefix(20))")
                #expect(String(buffer: answer.body).contains("invalid_header"), "\(bad.prefix(20))")
            }
            #expect(try await runs(client, "why").count == cases.count)
        }
    }

    @Test("STORAGE_API_TOKEN: one token, or unique name:token pairs; errors never show a token")
    func tokenParsing() throws {
        #expect(try APITokens(parsing: "abc").tokens == [.init(name: "api", token: "abc")])
        // One value is also the bearer whole, as the contract says: a pair lets in its token and the whole value
        // under its name; anything else with a colon is one token.
        let pair = try APITokens(parsing: " ops:Zx9q ")
        #expect(pair.name(of: "Zx9q") == "ops" && pair.name(of: "ops:Zx9q") == "ops" && pair.name(of: "ops") == nil)
        for plain in ["bad name:x", ":secret-9", "a/b:c", "x:"] {
            #expect(try APITokens(parsing: plain).tokens == [.init(name: "api", token: plain)])
        }
        #expect(
            try APITokens(parsing: "ci:a1, ops:b:2").tokens == [
                .init(name: "ci", token: "a1"), .init(name: "ops", token: "b:2"),
                .init(name: "ci", token: "ci:a1"), .init(name: "ops", token: "ops:b:2"),
            ])
        for bad in [
            "", "ci:x,ci:y", "a:same,b:same", "ci:,ops:b", "bad name:x,ops:y", "x,y", ":secret-9,ops:y", "a:b:c,b:c",
        ] {
            let error = #expect(throws: ConfigurationKeyError.self) { try APITokens(parsing: bad) }
            #expect(error?.key == "STORAGE_API_TOKEN", "\(bad)")
            #expect(!(error?.description.contains("secret-9") ?? true))
        }
        #expect(try APITokens.clientToken("ops:b1") == "b1")
        #expect(try APITokens.clientToken(" a/b:c ") == "a/b:c")
        #expect(try APITokens(parsing: "ci:a1,ops:b2").names == ["ci", "ops"])
        let listed = #expect(throws: ConfigurationKeyError.self) { try APITokens.clientToken("a:1,b:2") }
        #expect(listed?.description.contains("lists 2 tokens") == true)
        #expect(try APITokens.clientToken("plain") == "plain")
        let tokens = try APITokens(parsing: "ci:a1,ops:b2")
        #expect(tokens.name(of: "b2") == "ops" && tokens.name(of: "a1") == "ci" && tokens.name(of: "b") == nil)
        // A client given one pair of the list, sending it whole (the contract's bearer) or its token.
        let sent = try APITokens.clientToken("ops:b2")
        #expect(tokens.name(of: "ops:b2") == "ops" && tokens.name(of: sent) == "ops")
        #expect(tokens.name(of: "ci:b2") == nil && tokens.name(of: "ops:a1") == nil)
    }
}
