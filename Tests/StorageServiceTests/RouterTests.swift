import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import ServiceSupport
import TestSupport
import Testing
import WatermarkCore
import WatermarkStores

@testable import StorageService

// Over 300 lines for a reason: one suite, the whole HTTP API through the router, with one app fixture; split by
// route it would repeat the fixture.

/// Every endpoint and every error code of the contract, through the real router.
@Suite("Storage API")
struct RouterTests {
    let clock = ManualClock(.at("2026-01-01T00:00:00Z"))

    private func app(
        configure: (inout StorageConfiguration) -> Void = { _ in }, store: (any WatermarkStore)? = nil
    ) async throws -> some ApplicationProtocol {
        var configuration = StorageConfiguration()
        configuration.host = "127.0.0.1"
        configuration.port = 0
        configure(&configuration)
        let sqlite = store == nil ? try await StoreKind.sqlite.make(clock: clock, policy: configuration.policy) : nil
        return try await buildApplication(
            configuration: configuration,
            store: store ?? sqlite!,
            logger: .quiet
        )
    }

    private func json(_ response: TestResponse) throws -> [String: Any] {
        let object = try JSONSerialization.jsonObject(with: Data(response.body.readableBytesView))
        return try #require(object as? [String: Any])
    }

    private func errorCode(_ response: TestResponse) -> String? {
        ((try? json(response))?["error"] as? [String: Any])?["code"] as? String
    }

    private func errorMessage(_ response: TestResponse) throws -> String? {
        (try json(response)["error"] as? [String: Any])?["message"] as? String
    }

    private static let jsonHeaders: HTTPFields = [.contentType: "application/json"]

    @discardableResult
    private func put(
        _ client: some TestClientProtocol, _ id: String, _ body: String, headers: HTTPFields = [:], query: String = ""
    ) async throws -> TestResponse {
        var fields = Self.jsonHeaders
        fields.append(contentsOf: headers)
        return try await client.execute(
            uri: "/api/v1/watermarks/\(id)\(query)", method: .put, headers: fields, body: ByteBuffer(string: body)
        )
    }

    private func success(_ time: String, records: Int = 1) -> String {
        #"{"timestamp":"\#(time)","status":"success","records_collected":\#(records)}"#
    }

    // MARK: Endpoints

    @Test("GET /health answers healthy")
    func health() async throws {
        try await app().test(.router) { client in
            let response = try await client.execute(uri: "/health", method: .get)
            #expect(response.status == .ok)
            #expect(try try json(response)["status"] as? String == "healthy")
        }
    }

    @Test("first GET is 404; PUT creates (201) then updates (200) with ETag; GET returns the resource")
    func createReadUpdate() async throws {
        try await app().test(.router) { client in
            let missing = try await client.execute(uri: "/api/v1/watermarks/alienvault_otx", method: .get)
            #expect(missing.status == .notFound)
            #expect(errorCode(missing) == "watermark_not_found")

            let created = try await put(client, "alienvault_otx", success("2025-12-31T12:00:00Z", records: 150))
            #expect(created.status == .created)
            #expect(created.headers[.eTag] == "\"1\"")
            #expect(created.headers[.contentType] == "application/json")
            #expect(created.headers[.idempotentReplayed] == nil)
            let body = try json(created)
            #expect(body["source_id"] as? String == "alienvault_otx")
            #expect(body["last_successful_timestamp"] as? String == "2025-12-31T12:00:00Z")
            #expect(body["last_run_timestamp"] as? String == "2026-01-01T00:00:00Z")
            #expect(body["status"] as? String == "success")
            #expect(body["records_collected"] as? Int == 150)
            #expect(body.keys.contains("error_message") && body["error_message"] is NSNull)
            #expect(body["version"] as? Int == 1)
            #expect(body["consecutive_failures"] as? Int == 0)
            #expect(body["created_at"] as? String == "2026-01-01T00:00:00Z")

            let updated = try await put(client, "alienvault_otx", success("2025-12-31T12:30:00Z"))
            #expect(updated.status == .ok)
            #expect(updated.headers[.eTag] == "\"2\"")

            let read = try await client.execute(uri: "/api/v1/watermarks/alienvault_otx", method: .get)
            #expect(read.status == .ok && read.headers[.eTag] == "\"2\"")
            #expect(try try json(read)["last_successful_timestamp"] as? String == "2025-12-31T12:30:00Z")
            // A PUT answers the watermark exactly as the GET after it does: same bytes, same content type.
            #expect(updated.body == read.body)
            #expect(updated.headers[.contentType] == read.headers[.contentType])
        }
    }

    @Test("timestamps keep nanoseconds and come back in UTC")
    func timestampPrecision() async throws {
        try await app().test(.router) { client in
            let response = try await put(client, "ns", success("2025-12-31T14:00:00.123456789+02:00"))
            #expect(try try json(response)["last_successful_timestamp"] as? String == "2025-12-31T12:00:00.123456789Z")
        }
    }

    @Test("a failed run keeps the last success and records the error")
    func failedRun() async throws {
        try await app().test(.router) { client in
            try await put(client, "f", success("2025-12-31T12:00:00Z"))
            let failed = try await put(client, "f", #"{"status":"failed","error_message":"HTTP 503 from feed"}"#)
            #expect(failed.status == .ok)
            let body = try json(failed)
            #expect(body["status"] as? String == "failed")
            #expect(body["last_successful_timestamp"] as? String == "2025-12-31T12:00:00Z")
            #expect(body["error_message"] as? String == "HTTP 503 from feed")
            #expect(body["consecutive_failures"] as? Int == 1)
        }
    }

    @Test("regression is 409 and changes nothing; ?force=true backfills")
    func regression() async throws {
        try await app().test(.router) { client in
            try await put(client, "r", success("2025-12-31T12:00:00Z"))
            let before = try await client.execute(uri: "/api/v1/watermarks/r", method: .get)
            clock.advance(.seconds(5))
            let refused = try await put(client, "r", success("2025-12-31T11:00:00Z"))
            #expect(refused.status == .conflict)
            #expect(errorCode(refused) == "watermark_regression")
            let after = try await client.execute(uri: "/api/v1/watermarks/r", method: .get)
            #expect(after.body == before.body)
            let forced = try await put(client, "r", success("2025-12-31T11:00:00Z"), query: "?force=true")
            #expect(forced.status == .ok)
            #expect(try try json(forced)["last_successful_timestamp"] as? String == "2025-12-31T11:00:00Z")
            let badForce = try await put(client, "r", success("2025-12-31T11:00:00Z"), query: "?force=maybe")
            #expect(badForce.status == .badRequest && errorCode(badForce) == "invalid_parameter")
        }
    }

    @Test("a success timestamp far in the future is 400")
    func future() async throws {
        try await app().test(.router) { client in
            let response = try await put(client, "fut", success("2026-01-01T00:05:01Z"))
            #expect(response.status == .badRequest)
            #expect(errorCode(response) == "timestamp_in_future")
        }
    }

    @Test("If-Match / If-None-Match give 412 and malformed ones 400")
    func conditionalRequests() async throws {
        try await app().test(.router) { client in
            let created = try await put(client, "c", success("2025-12-31T00:00:00Z"), headers: [.ifNoneMatch: "*"])
            #expect(created.status == .created)
            let again = try await put(client, "c", success("2025-12-31T00:00:00Z"), headers: [.ifNoneMatch: "*"])
            #expect(again.status == .preconditionFailed && errorCode(again) == "precondition_failed")
            let stale = try await put(client, "c", success("2025-12-31T00:00:00Z"), headers: [.ifMatch: "\"7\""])
            #expect(stale.status == .preconditionFailed)
            let matching = try await put(client, "c", success("2025-12-31T00:00:00Z"), headers: [.ifMatch: "\"1\""])
            #expect(matching.status == .ok && matching.headers[.eTag] == "\"2\"")
            for bad in ["x2", "\"abc\"", "W/\"2\"", "\"\""] {
                let response = try await put(client, "c", success("2025-12-31T00:00:00Z"), headers: [.ifMatch: bad])
                #expect(response.status == .badRequest && errorCode(response) == "invalid_header", "If-Match: \(bad)")
            }
            let deleteStale = try await client.execute(
                uri: "/api/v1/watermarks/c", method: .delete, headers: [.ifMatch: "\"1\""])
            #expect(deleteStale.status == .preconditionFailed)
            let deleted = try await client.execute(
                uri: "/api/v1/watermarks/c", method: .delete, headers: [.ifMatch: "\"2\""])
            #expect(deleted.status == .noContent)
        }
    }

    /// What the fuzzer found schema-valid and the service refused: each is accepted now, or refused for a reason
    /// of state (412), as the document says.
    @Test("schema-valid requests: bare If-Match versions, both conditions, %3A in ids, 490.0 seconds")
    func schemaValidRequestsAreAccepted() async throws {
        try await app().test(.router) { client in
            let created = try await put(client, "a:b", success("2025-12-31T00:00:00Z"))
            #expect(created.status == .created)
            // The same source, its ':' percent-encoded (as AsyncHTTPClient and Python clients send it).
            let encoded = try await client.execute(uri: "/api/v1/watermarks/a%3Ab", method: .get)
            let encodedBody = try json(encoded)
            #expect(encoded.status == .ok && encodedBody["source_id"] as? String == "a:b")
            let updated = try await put(client, "a%3Ab", success("2025-12-31T01:00:00Z"), headers: [.ifMatch: "1"])
            #expect(updated.status == .ok && updated.headers[.eTag] == "\"2\"", "a bare version is the ETag's")
            for never in ["0", "\"0\""] {
                let response = try await put(client, "a:b", success("2025-12-31T02:00:00Z"), headers: [.ifMatch: never])
                #expect(response.status == .preconditionFailed, "If-Match: \(never)")
            }
            let both = try await put(
                client, "new", success("2025-12-31T00:00:00Z"), headers: [.ifMatch: "\"1\"", .ifNoneMatch: "*"])
            #expect(both.status == .preconditionFailed && errorCode(both) == "precondition_failed")
            #expect(try await client.execute(uri: "/api/v1/watermarks/new", method: .get).status == .notFound)
            for id in ["a%2Fb", "%00", "%2E%2E", "a%253Ab"] {
                let response = try await client.execute(uri: "/api/v1/watermarks/\(id)", method: .get)
                #expect(response.status == .badRequest && errorCode(response) == "invalid_source_id", "\(id)")
            }
            let lease = try await client.execute(
                uri: "/api/v1/watermarks/a%3Ab/lease", method: .post, headers: Self.jsonHeaders,
                body: ByteBuffer(string: #"{"owner":"c1","ttl_seconds":490.0}"#))
            let leaseBody = try json(lease)
            #expect(lease.status == .ok && leaseBody["source_id"] as? String == "a:b")
            let fraction = try await client.execute(
                uri: "/api/v1/watermarks/other/lease", method: .post, headers: Self.jsonHeaders,
                body: ByteBuffer(string: #"{"owner":"c1","ttl_seconds":490.5}"#))
            #expect(fraction.status == .badRequest)
        }
    }

    @Test("Idempotency-Key replays the first answer; reuse with another body is 409")
    func idempotency() async throws {
        try await app().test(.router) { client in
            let key: HTTPFields = [.idempotencyKey: "0b7c6a4e-run-42"]
            let first = try await put(client, "i", success("2025-12-31T00:00:00Z"), headers: key)
            clock.advance(.seconds(3))
            let retry = try await put(client, "i", success("2025-12-31T00:00:00Z"), headers: key)
            #expect(first.status == .created && retry.status == .created)
            #expect(retry.body == first.body)
            #expect(retry.headers[.idempotentReplayed] == "true")
            let history = try await client.execute(uri: "/api/v1/watermarks/i/history", method: .get)
            #expect(try (try json(history)["runs"] as? [Any])?.count == 1)
            let reused = try await put(client, "i", success("2025-12-31T01:00:00Z"), headers: key)
            #expect(reused.status == .conflict && errorCode(reused) == "idempotency_key_reused")
            let badKey = try await put(
                client, "i", success("2025-12-31T01:00:00Z"), headers: [.idempotencyKey: "has space"])
            #expect(badKey.status == .badRequest && errorCode(badKey) == "invalid_header")
        }
    }

    @Test("DELETE resets (204), then 404; the next PUT creates again")
    func delete() async throws {
        try await app().test(.router) { client in
            try await put(client, "d", success("2025-12-31T00:00:00Z"))
            #expect(try try await client.execute(uri: "/api/v1/watermarks/d", method: .delete).status == .noContent)
            #expect(try try await client.execute(uri: "/api/v1/watermarks/d", method: .get).status == .notFound)
            let again = try await client.execute(uri: "/api/v1/watermarks/d", method: .delete)
            #expect(again.status == .notFound && errorCode(again) == "watermark_not_found")
            // The reset was version 2 (a run of the history); the recreation goes on from there.
            let recreated = try await put(client, "d", success("2025-01-01T00:00:00Z"))
            #expect(recreated.status == .created && recreated.headers[.eTag] == "\"3\"")
        }
    }

    @Test("list: sorted, paged with limit and cursor, filtered by status and staleness")
    func list() async throws {
        try await app().test(.router) { client in
            for id in ["b", "a", "c"] { try await put(client, id, success("2025-12-31T23:30:00Z")) }
            try await put(client, "old", success("2025-12-01T00:00:00Z"))
            try await put(client, "c", #"{"status":"failed","error_message":"x"}"#)

            let page1 = try json(try await client.execute(uri: "/api/v1/watermarks?limit=2", method: .get))
            let ids1 = (page1["watermarks"] as? [[String: Any]])?.compactMap { $0["source_id"] as? String }
            #expect(ids1 == ["a", "b"] && page1["next_cursor"] as? String == "b")
            let page2 = try json(try await client.execute(uri: "/api/v1/watermarks?limit=2&cursor=b", method: .get))
            let ids2 = (page2["watermarks"] as? [[String: Any]])?.compactMap { $0["source_id"] as? String }
            #expect(ids2 == ["c", "old"] && page2["next_cursor"] is NSNull)

            let failed = try json(try await client.execute(uri: "/api/v1/watermarks?status=failed", method: .get))
            #expect((failed["watermarks"] as? [[String: Any]])?.compactMap { $0["source_id"] as? String } == ["c"])
            let stale = try json(
                try await client.execute(uri: "/api/v1/watermarks?stale_after_seconds=3600", method: .get))
            #expect((stale["watermarks"] as? [[String: Any]])?.compactMap { $0["source_id"] as? String } == ["old"])

            for bad in ["limit=0", "limit=1001", "limit=x", "status=ok", "stale_after_seconds=-1", "cursor=a%2Fb"] {
                let response = try await client.execute(uri: "/api/v1/watermarks?\(bad)", method: .get)
                #expect(response.status == .badRequest && errorCode(response) == "invalid_parameter", "\(bad)")
            }
        }
    }

    @Test("history lists every accepted update newest first with its fields")
    func history() async throws {
        try await app().test(.router) { client in
            #expect(try try await client.execute(uri: "/api/v1/watermarks/h/history", method: .get).status == .notFound)
            try await put(client, "h", success("2025-12-31T00:00:00Z", records: 10))
            try await put(client, "h", #"{"status":"failed","error_message":"boom","records_collected":2}"#)
            try await put(client, "h", success("2025-12-30T00:00:00Z"))  // refused: not a run
            let body = try json(try await client.execute(uri: "/api/v1/watermarks/h/history?limit=5", method: .get))
            let runs = try #require(body["runs"] as? [[String: Any]])
            #expect(runs.count == 2)
            #expect(runs[0]["version"] as? Int == 2 && runs[0]["status"] as? String == "failed")
            #expect(runs[0]["timestamp"] is NSNull && runs[0]["error_message"] as? String == "boom")
            #expect(runs[0]["last_successful_timestamp"] as? String == "2025-12-31T00:00:00Z")
            #expect(runs[0]["recorded_at"] as? String == "2026-01-01T00:00:00Z")
            #expect(
                runs[1]["timestamp"] as? String == "2025-12-31T00:00:00Z" && runs[1]["records_collected"] as? Int == 10)
            let limited = try json(try await client.execute(uri: "/api/v1/watermarks/h/history?limit=1", method: .get))
            #expect((limited["runs"] as? [Any])?.count == 1)
            let bad = try await client.execute(uri: "/api/v1/watermarks/h/history?limit=0", method: .get)
            #expect(bad.status == .badRequest)
        }
    }

    /// SQLite kept an error message up to its first NUL while the answer showed all of it: a NUL is refused now, and
    /// what was stored stays as it was.
    @Test("an error message with a NUL is refused and changes nothing")
    func nulInErrorMessageChangesNothing() async throws {
        try await app().test(.router) { client in
            let first = try await put(client, "nul", #"{"status":"failed","error_message":"first"}"#)
            #expect(first.status == .created)
            let refused = try await put(client, "nul", #"{"status":"failed","error_message":"a\u0000b"}"#)
            #expect(refused.status == .badRequest && errorCode(refused) == "invalid_body")
            let body = try json(try await client.execute(uri: "/api/v1/watermarks/nul", method: .get))
            #expect(body["error_message"] as? String == "first" && body["version"] as? Int == 1)
            let never = try await put(client, "nul-new", #"{"status":"failed","error_message":"\u0000"}"#)
            #expect(never.status == .badRequest)
            let absent = try await client.execute(uri: "/api/v1/watermarks/nul-new", method: .get)
            #expect(absent.status == .notFound)
        }
    }

    @Test("lengths count characters as JSON Schema's maxLength does (code points), not bytes")
    func lengthsCountCharacters() async throws {
        try await app().test(.router) { client in
            // 16,384 two-byte characters (32 KiB) is the document's limit, accepted; one more is refused.
            let limit = String(repeating: "é", count: 16_384)
            let accepted = try await put(client, "m", #"{"status":"failed","error_message":"\#(limit)"}"#)
            #expect(accepted.status == .created)
            let over = try await put(client, "m", #"{"status":"failed","error_message":"\#(limit)é"}"#)
            #expect(over.status == .badRequest && errorCode(over) == "invalid_body")
            let owner = String(repeating: "é", count: 256)
            let granted = try await client.execute(
                uri: "/api/v1/watermarks/m/lease", method: .post, headers: Self.jsonHeaders,
                body: ByteBuffer(string: #"{"owner":"\#(owner)"}"#))
            #expect(granted.status == .ok)
            let tooLong = try await client.execute(
                uri: "/api/v1/watermarks/n/lease", method: .post, headers: Self.jsonHeaders,
                body: ByteBuffer(string: #"{"owner":"\#(owner)é"}"#))
            #expect(tooLong.status == .badRequest && errorCode(tooLong) == "invalid_body")
        }
    }

    @Test("after a reset the history shows it (status reset, with reason), and the runs after the next update")
    func historyAfterReset() async throws {
        try await app().test(.router) { client in
            try await put(client, "r", success("2025-12-31T00:00:00Z"))
            #expect(
                try await client.execute(
                    uri: "/api/v1/watermarks/r", method: .delete, headers: [.reason: "replay%20from%20%C3%A9t%C3%A9"]
                ).status == .noContent)
            #expect(try await client.execute(uri: "/api/v1/watermarks/r", method: .get).status == .notFound)
            let reset = try json(try await client.execute(uri: "/api/v1/watermarks/r/history", method: .get))
            let newest = (reset["runs"] as? [[String: Any]])?.first
            #expect(newest?["status"] as? String == "reset" && newest?["version"] as? Int == 2)
            #expect(newest?["reason"] as? String == "replay from été")
            #expect(newest?["actor"] is NSNull)  // no tokens, no lease: nobody to name
            try await put(client, "r", success("2025-01-01T00:00:00Z"))
            let body = try json(try await client.execute(uri: "/api/v1/watermarks/r/history", method: .get))
            #expect((body["runs"] as? [[String: Any]])?.compactMap { $0["version"] as? Int } == [3, 2, 1])
            #expect(
                try await client.execute(uri: "/api/v1/watermarks/never/history", method: .get).status == .notFound)
        }
    }

    @Test("leases: grant, 409 lease_held with holder, renew, fencing on writes, release")
    func leases() async throws {
        try await app().test(.router) { client in
            let leasePath = "/api/v1/watermarks/l/lease"
            let granted = try await client.execute(
                uri: leasePath, method: .post, headers: Self.jsonHeaders,
                body: ByteBuffer(string: #"{"owner":"collector-1","ttl_seconds":60}"#)
            )
            #expect(granted.status == .ok)
            let lease = try json(granted)
            #expect(lease["source_id"] as? String == "l" && lease["owner"] as? String == "collector-1")
            #expect(lease["fencing_token"] as? Int == 1 && lease["expires_at"] as? String == "2026-01-01T00:01:00Z")

            let held = try await client.execute(
                uri: leasePath, method: .post, headers: Self.jsonHeaders,
                body: ByteBuffer(string: #"{"owner":"collector-2"}"#)
            )
            #expect(held.status == .conflict)
            let heldError = try #require(try json(held)["error"] as? [String: Any])
            #expect(heldError["code"] as? String == "lease_held" && heldError["holder"] as? String == "collector-1")
            #expect(heldError["expires_at"] as? String == "2026-01-01T00:01:00Z")

            let without = try await put(client, "l", success("2025-12-31T00:00:00Z"))
            #expect(without.status == .conflict && errorCode(without) == "lease_required")
            let wrong = try await put(client, "l", success("2025-12-31T00:00:00Z"), headers: [.leaseToken: "2"])
            #expect(wrong.status == .conflict && errorCode(wrong) == "stale_lease")
            let badToken = try await put(client, "l", success("2025-12-31T00:00:00Z"), headers: [.leaseToken: "abc"])
            #expect(badToken.status == .badRequest && errorCode(badToken) == "invalid_header")
            // Exactly the document's pattern (^[1-9][0-9]{0,17}$): no sign, no leading zero, at most 18 digits.
            for text in ["+1", "01", "0", "-1", "1.0", "1e0", "1234567890123456789", "0x1", ""] {
                let refused = try await put(client, "l", success("2025-12-31T00:00:00Z"), headers: [.leaseToken: text])
                #expect(refused.status == .badRequest && errorCode(refused) == "invalid_header", "Lease-Token: \(text)")
            }
            let fenced = try await put(client, "l", success("2025-12-31T00:00:00Z"), headers: [.leaseToken: "1"])
            #expect(fenced.status == .created)

            let released = try await client.execute(uri: leasePath, method: .delete, headers: [.leaseToken: "1"])
            #expect(released.status == .noContent)
            let next = try await client.execute(
                uri: leasePath, method: .post, headers: Self.jsonHeaders,
                body: ByteBuffer(string: #"{"owner":"collector-2"}"#)
            )
            #expect(try try json(next)["fencing_token"] as? Int == 2)
            let old = try await put(client, "l", success("2025-12-31T01:00:00Z"), headers: [.leaseToken: "1"])
            #expect(old.status == .conflict && errorCode(old) == "stale_lease")

            for bad in [
                #"{}"#, #"{"owner":""}"#, #"{"owner":"x","ttl_seconds":0}"#, #"{"owner":"x","ttl_seconds":"60"}"#,
                #"{"owner":5}"#,
            ] {
                let response = try await client.execute(
                    uri: leasePath, method: .post, headers: Self.jsonHeaders, body: ByteBuffer(string: bad))
                #expect(response.status == .badRequest && errorCode(response) == "invalid_body", "\(bad)")
            }
            // Past what a lease may last, however large: the rules' words, not "at least 1" or "a whole number".
            for ttl in ["86401", "3000000000", "1e15", "100000000000000000000", "-5"] {
                let response = try await client.execute(
                    uri: leasePath, method: .post, headers: Self.jsonHeaders,
                    body: ByteBuffer(string: #"{"owner":"x","ttl_seconds":\#(ttl)}"#))
                #expect(response.status == .badRequest && errorCode(response) == "invalid_body", "\(ttl)")
                #expect(try errorMessage(response) == #"field "ttl_seconds" must be from 1 to 86400"#, "\(ttl)")
            }
        }
    }

    @Test("/status reports version, uptime, database and watermark counts")
    func status() async throws {
        try await app().test(.router) { client in
            try await put(client, "ok", success("2025-12-31T23:59:00Z"))
            try await put(client, "bad", #"{"status":"failed","error_message":"x"}"#)
            let body = try json(try await client.execute(uri: "/status", method: .get))
            #expect(body["version"] is String && body["uptime_seconds"] is Int)
            let database = try #require(body["database"] as? [String: Any])
            #expect(database["journal_mode"] is String && database["size_bytes"] is Int && database["path"] is String)
            let watermarks = try #require(body["watermarks"] as? [String: Any])
            #expect(
                watermarks["total"] as? Int == 2 && watermarks["failed"] as? Int == 1
                    && watermarks["stale"] as? Int == 1)
        }
    }

    @Test("/metrics exposes requests by route and status, latency, watermark counts and per-source series")
    func metrics() async throws {
        try await app().test(.router) { client in
            try await put(client, "m", success("2025-12-31T23:59:00Z"))
            try await put(client, "n", #"{"status":"failed","error_message":"boom"}"#)
            _ = try await client.execute(uri: "/api/v1/watermarks/missing", method: .get)
            var text = String(buffer: try await client.execute(uri: "/metrics", method: .get).body)
            #expect(
                text.contains(
                    #"storage_http_requests_total{method="PUT",route="/api/v1/watermarks/{source_id}",status="201"} 2"#)
            )
            #expect(
                text.contains(
                    #"storage_http_requests_total{method="GET",route="/api/v1/watermarks/{source_id}",status="404"} 1"#)
            )
            #expect(text.contains("storage_http_request_duration_seconds_bucket"))
            #expect(text.contains(#"storage_watermarks{state="total"} 2"#))
            // 2025-12-31T23:59:00Z is 1767225540 s after 1970; the clock reads 2026-01-01T00:00:00Z.
            #expect(text.contains(#"storage_watermark_timestamp_seconds{source_id="m"} 1767225540.0"#), "\(text)")
            #expect(text.contains(#"storage_watermark_last_run_timestamp_seconds{source_id="n"} 1767225600.0"#))
            #expect(text.contains(#"storage_watermark_consecutive_failures{source_id="n"} 1.0"#))
            #expect(!text.contains(#"storage_watermark_timestamp_seconds{source_id="n"}"#))  // never succeeded
            // A reset source leaves the per-source series at their next refresh (at most a second later).
            _ = try await client.execute(uri: "/api/v1/watermarks/m", method: .delete)
            let deadline = ContinuousClock.now + .seconds(10)
            repeat {
                text = String(buffer: try await client.execute(uri: "/metrics", method: .get).body)
                if !text.contains(#"source_id="m""#) { break }
                try await Task.sleep(for: .milliseconds(100))
            } while ContinuousClock.now < deadline
            #expect(!text.contains(#"source_id="m""#) && text.contains(#"source_id="n""#))
        }
        // METRICS_SOURCE_LIMIT bounds the series: the first sources by id, none at 0.
        for (limit, shown) in [(1, ["a"]), (0, [String]())] {
            try await app(configure: { $0.metricsSourceLimit = limit }).test(.router) { client in
                for id in ["b", "a", "c"] { try await put(client, id, success("2025-12-31T23:59:00Z")) }
                let text = String(buffer: try await client.execute(uri: "/metrics", method: .get).body)
                let listed = ["a", "b", "c"].filter {
                    text.contains(#"storage_watermark_last_run_timestamp_seconds{source_id="\#($0)"}"#)
                }
                #expect(listed == shown, "limit \(limit)")
            }
        }
    }

    // MARK: Bad input

    @Test(
        "malformed bodies are 400 with a code naming the problem, and change nothing",
        arguments: [
            ("{", "invalid_json"), ("", "invalid_json"), ("[1,2]", "invalid_body"), ("\"text\"", "invalid_body"),
            (#"{"timestamp":"2025-12-31T00:00:00Z","status":"ok"}"#, "invalid_status"),
            (#"{"timestamp":"2025-02-30T00:00:00Z","status":"success"}"#, "invalid_timestamp"),
            (#"{"timestamp":"2025-12-31T00:00:00","status":"success"}"#, "invalid_timestamp"),
            (#"{"timestamp":"garbage","status":"success"}"#, "invalid_timestamp"),
            (#"{"status":"success"}"#, "missing_timestamp"),
            (#"{"timestamp":"2025-12-31T00:00:00Z","status":"success","records_collected":"many"}"#, "invalid_body"),
            (#"{"timestamp":null,"status":null}"#, "invalid_body"),
        ])
    func malformedBodies(body: String, code: String) async throws {
        try await app().test(.router) { client in
            try await put(client, "m", success("2025-12-30T00:00:00Z"))
            let before = try await client.execute(uri: "/api/v1/watermarks/m", method: .get)
            let response = try await put(client, "m", body)
            #expect(response.status == .badRequest)
            #expect(errorCode(response) == code)
            let after = try await client.execute(uri: "/api/v1/watermarks/m", method: .get)
            #expect(after.body == before.body)
        }
    }

    @Test("415 for a non-JSON content type, 413 for a body over 64 KiB")
    func mediaTypeAndSize() async throws {
        try await app().test(.router) { client in
            let form = try await client.execute(
                uri: "/api/v1/watermarks/s", method: .put, headers: [.contentType: "text/plain"],
                body: ByteBuffer(string: success("2025-12-30T00:00:00Z"))
            )
            #expect(form.status == .unsupportedMediaType && errorCode(form) == "unsupported_media_type")
            let charset = try await client.execute(
                uri: "/api/v1/watermarks/s", method: .put, headers: [.contentType: "application/json; charset=utf-8"],
                body: ByteBuffer(string: success("2025-12-30T00:00:00Z"))
            )
            #expect(charset.status == .created)
            let padding = String(repeating: "x", count: 65 * 1024)
            let large = try await put(client, "s", #"{"status":"failed","error_message":"\#(padding)"}"#)
            #expect(large.status == .contentTooLarge && errorCode(large) == "payload_too_large")
        }
    }

    @Test(
        "invalid source ids are 400 on every endpoint",
        arguments: [
            "a%2Fb", "..", ".", "%C3%BCnicode", String(repeating: "x", count: 129), "a%20b", "%00",
        ])
    func invalidSourceIDs(id: String) async throws {
        try await app().test(.router) { client in
            let requests: [(String, HTTPRequest.Method, String?)] = [
                ("/api/v1/watermarks/\(id)", .get, nil),
                ("/api/v1/watermarks/\(id)", .put, success("2025-12-30T00:00:00Z")),
                ("/api/v1/watermarks/\(id)", .delete, nil),
                ("/api/v1/watermarks/\(id)/history", .get, nil),
                ("/api/v1/watermarks/\(id)/lease", .post, #"{"owner":"x"}"#),
                ("/api/v1/watermarks/\(id)/lease", .delete, nil),
            ]
            for (uri, method, body) in requests {
                let response = try await client.execute(
                    uri: uri, method: method, headers: Self.jsonHeaders, body: body.map { ByteBuffer(string: $0) }
                )
                // "." and ".." are also normalised away by some clients; here they reach the router as-is.
                #expect(response.status == .badRequest, "\(method) \(uri)")
                #expect(errorCode(response) == "invalid_source_id", "\(method) \(uri)")
            }
        }
    }

    @Test("wrong method is 405 with Allow; unknown path is a JSON 404")
    func methodAndPath() async throws {
        try await app().test(.router) { client in
            let patch = try await client.execute(uri: "/api/v1/watermarks/x", method: .patch)
            #expect(patch.status == .methodNotAllowed)
            #expect(patch.headers[.allow] == "DELETE, GET, HEAD, PUT")
            #expect(errorCode(patch) == "method_not_allowed")
            let postHealth = try await client.execute(uri: "/health", method: .post)
            #expect(postHealth.status == .methodNotAllowed && postHealth.headers[.allow] == "GET, HEAD")
            let leasePut = try await client.execute(uri: "/api/v1/watermarks/x/lease", method: .put)
            #expect(leasePut.status == .methodNotAllowed && leasePut.headers[.allow] == "DELETE, GET, HEAD, POST")
            let unknown = try await client.execute(uri: "/api/v2/nothing", method: .get)
            #expect(unknown.status == .notFound && errorCode(unknown) == "not_found")
        }
    }

    // MARK: Access

    @Test("with tokens: 401 without or with a wrong token, 403 for the read token writing")
    func tokens() async throws {
        let app = try await app {
            $0.apiTokens = APITokens([.init(name: "writer", token: "write-secret")]); $0.readToken = "read-secret"
        }
        try await app.test(.router) { client in
            for (uri, method) in [
                ("/api/v1/watermarks/a", HTTPRequest.Method.get), ("/api/v1/watermarks", .get), ("/status", .get),
                ("/api/v1/watermarks/a", .put),
            ] {
                let none = try await client.execute(uri: uri, method: method, headers: Self.jsonHeaders)
                #expect(none.status == .unauthorized && errorCode(none) == "unauthorized", "\(method) \(uri)")
                let wrong = try await client.execute(
                    uri: uri, method: method, headers: [.authorization: "Bearer write-secreT"])
                #expect(wrong.status == .unauthorized, "\(method) \(uri)")
            }
            #expect(try try await client.execute(uri: "/health", method: .get).status == .ok)
            #expect(try try await client.execute(uri: "/metrics", method: .get).status == .ok)

            var writer = Self.jsonHeaders
            writer[.authorization] = "Bearer write-secret"
            let written = try await client.execute(
                uri: "/api/v1/watermarks/a", method: .put, headers: writer,
                body: ByteBuffer(string: success("2025-12-31T00:00:00Z"))
            )
            #expect(written.status == .created)

            var reader = Self.jsonHeaders
            reader[.authorization] = "Bearer read-secret"
            #expect(
                try try await client.execute(uri: "/api/v1/watermarks/a", method: .get, headers: reader).status == .ok)
            #expect(try try await client.execute(uri: "/status", method: .get, headers: reader).status == .ok)
            let forbidden = try await client.execute(
                uri: "/api/v1/watermarks/a", method: .put, headers: reader,
                body: ByteBuffer(string: success("2025-12-31T01:00:00Z"))
            )
            #expect(forbidden.status == .forbidden && errorCode(forbidden) == "forbidden")
            #expect(
                try try await client.execute(uri: "/api/v1/watermarks/a", method: .delete, headers: reader).status
                    == .forbidden)
            let unchanged = try json(
                try await client.execute(uri: "/api/v1/watermarks/a", method: .get, headers: reader))
            #expect(unchanged["version"] as? Int == 1)
        }
    }

    @Test("constant-time comparison is exact")
    func constantTime() {
        #expect(APITokens.constantTimeEquals("secret", "secret"))
        #expect(!APITokens.constantTimeEquals("secret", "secreT"))
        #expect(!APITokens.constantTimeEquals("secret", "secret2"))
        #expect(!APITokens.constantTimeEquals("", "x"))
    }

    // MARK: Database unavailable

    @Test("a database that cannot be used gives 503 on health and on the API")
    func unavailable() async throws {
        try await app(store: UnavailableStore()).test(.router) { client in
            let health = try await client.execute(uri: "/health", method: .get)
            #expect(try health.status == .serviceUnavailable && json(health)["status"] as? String == "unhealthy")
            let read = try await client.execute(uri: "/api/v1/watermarks/a", method: .get)
            #expect(read.status == .serviceUnavailable && errorCode(read) == "database_unavailable")
            let write = try await put(client, "a", success("2025-12-31T00:00:00Z"))
            #expect(write.status == .serviceUnavailable)
            #expect(try try await client.execute(uri: "/metrics", method: .get).status == .ok)
        }
    }

    /// `/health` needs no token: with tokens configured, a caller without one is not told what the failure names
    /// (the database's host and user, the file's path); one with a token, or a service without tokens, is.
    @Test("an unhealthy database's detail is shown on /health only to a caller with a token")
    func unhealthyDetailNeedsAToken() async throws {
        let configure: (inout StorageConfiguration) -> Void = {
            $0.apiTokens = APITokens([.init(name: "writer", token: "write-secret")])
        }
        try await app(configure: configure, store: UnavailableStore()).test(.router) { client in
            let anonymous = try json(try await client.execute(uri: "/health", method: .get))
            #expect(anonymous["error"] as? String == SystemController<StorageRequestContext>.undisclosedHealthError)
            let told = try json(
                try await client.execute(uri: "/health", method: .get, headers: [.authorization: "Bearer write-secret"])
            )
            #expect((told["error"] as? String)?.contains("SQLITE_IOERR") == true, "\(told)")
        }
        try await app(store: UnavailableStore()).test(.router) { client in
            let open = try json(try await client.execute(uri: "/health", method: .get))
            #expect((open["error"] as? String)?.contains("SQLITE_IOERR") == true, "\(open)")
        }
    }
}

/// A store whose database is gone: every call fails the way the SQLite store reports it.
struct UnavailableStore: WatermarkStore {
    private var error: WatermarkError { .unavailable("SQLITE_IOERR: disk I/O error") }
    func watermark(for sourceID: SourceID) async throws -> Watermark? { throw error }
    func write(_ write: WatermarkWrite) async throws -> WriteOutcome { throw error }
    func delete(
        _ sourceID: SourceID, precondition: WritePrecondition?, leaseToken: Int64?, attribution: Attribution
    ) async throws { throw error }
    func list(_ query: WatermarkQuery) async throws -> WatermarkPage { throw error }
    func history(for sourceID: SourceID, limit: Int) async throws -> [WatermarkRun] { throw error }
    func lease(for sourceID: SourceID) async throws -> Lease? { throw error }
    func acquireLease(for sourceID: SourceID, owner: String, ttl: Duration) async throws -> Lease { throw error }
    func releaseLease(for sourceID: SourceID, token: Int64?) async throws { throw error }
    func summary() async throws -> WatermarkSummary { throw error }
    func checkHealth() async throws { throw error }
    func info() async throws -> StoreInfo { throw error }
}
