import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import ServiceSupport
import StorageClient
import TestSupport
import WatermarkCore

@testable import CollectionService

/// A scripted HTTP answer of a fake source.
struct FakeAnswer: Sendable {
    var status: Int
    var headers: [String: String] = [:]
    var body: String
}

/// What a fake source saw.
struct SeenRequest: Sendable {
    var path: String
    var query: [String: String]
    var headers: [String: String]
}

/// A TAXII 2.1 collection in memory, strict like real servers: `added_after` must have exactly six fraction
/// digits, is exclusive, pages carry `X-TAXII-Date-Added-First/Last`, the last page may be `{}`. Each version
/// of an object is its own entry (its own `date_added`); `match[version]` is `last` unless `all` is asked for,
/// and a `next` request must repeat the first request's filters, as medallion insists.
actor FakeTAXIIServer {
    struct Object: Sendable {
        var id: String
        var modified: String
        var dateAdded: Timestamp
    }

    /// How the server departs from the happy path.
    struct Quirks: Sendable {
        /// Pages by date only: `more` without `next` (the client continues with `added_after`).
        var noNextTokens = false
        /// No `X-TAXII-Date-Added-*` headers.
        var omitDateHeaders = false
        /// A `X-TAXII-Date-Added-Last` that is not a timestamp.
        var malformedLastHeader = false
        /// Leaves `more` out of the envelope (a `next` still says there is more).
        var omitMore = false
        /// Puts a `next` on the last page too, an empty one included (its token answers an empty page), and answers
        /// an empty page as an envelope, not `{}`.
        var nextOnLastPage = false
        /// `X-TAXII-Date-Added-Last` is this instant on every answer (a server's clock, not the page's last object),
        /// and no `X-TAXII-Date-Added-First`.
        var lastHeaderClock: Timestamp?
        /// Each page's objects in reverse order (headers still give first and last date_added).
        var reverseWithinPage = false
        /// Puts each object's `date_added` into the object itself (some servers do).
        var dateAddedInObjects = false
        /// Pages a query through one session whose token stays the same and which moves on as it answers, as
        /// medallion does: the same `next` sent twice is answered with the page after.
        var advancingSessions = false
        /// The requests (1-based) whose page is taken from the session and then answered 502, as a proxy in front
        /// of the server does when the server's answer is lost.
        var lostAnswers: Set<Int> = []
        /// Answers a `next` request as if it were the first (its filters only), yet says `more` with a token.
        var ignoresNext = false
        /// The requests (1-based) whose `next` token the server has forgotten (medallion drops a session unused for
        /// 30 s): answered 400 "next not valid".
        var forgottenSessions: Set<Int> = []
    }

    var objects: [Object] = []
    var scripted: [FakeAnswer] = []
    var requests: [SeenRequest] = []
    var pagesByToken: [String: (filters: [String: String], rest: [Object])] = [:]
    var emptyAsBraces = true
    var requiredAuthorization: String?
    var quirks = Quirks()

    func add(_ object: Object) { objects.append(object) }
    func script(_ answers: [FakeAnswer]) { scripted += answers }
    func setRequiredAuthorization(_ value: String?) { requiredAuthorization = value }
    func setQuirks(_ quirks: Quirks) { self.quirks = quirks }

    func handle(_ seen: SeenRequest) -> FakeAnswer {
        requests.append(seen)
        if !scripted.isEmpty { return scripted.removeFirst() }
        if let required = requiredAuthorization, seen.headers["authorization"] != required {
            return FakeAnswer(status: 401, body: #"{"title":"unauthorized"}"#)
        }
        guard seen.headers["accept"] == "application/taxii+json;version=2.1" else {
            return FakeAnswer(status: 406, body: #"{"title":"bad accept"}"#)
        }
        let limit = Int(seen.query["limit"] ?? "") ?? 100
        let filters = seen.query.filter { $0.key != "limit" && $0.key != "next" }
        var remaining: [Object]
        var session: String?
        if let token = seen.query["next"], !quirks.ignoresNext {
            if quirks.forgottenSessions.contains(requests.count) { pagesByToken[token] = nil }
            if quirks.advancingSessions { session = token }
            guard let stored = pagesByToken.removeValue(forKey: token) else {
                return FakeAnswer(status: 400, body: #"{"title":"next not valid"}"#)
            }
            guard stored.filters == filters else {
                return FakeAnswer(status: 400, body: #"{"title":"params changed over subsequent transaction"}"#)
            }
            remaining = stored.rest
        } else {
            var after = Timestamp(seconds: 0)
            if let text = seen.query["added_after"] {
                guard Self.isStrictMicros(text), let parsed = try? Timestamp(rfc3339: text) else {
                    return FakeAnswer(status: 400, body: #"{"title":"bad added_after"}"#)
                }
                after = parsed
            }
            var matching = objects.filter { $0.dateAdded > after }
            if seen.query["match[version]"] != "all" {
                // `last`: the newest version of each object only.
                var newest: [String: Object] = [:]
                for object in objects where (newest[object.id].map { $0.modified < object.modified } ?? true) {
                    newest[object.id] = object
                }
                matching = matching.filter { newest[$0.id]?.modified == $0.modified }
            }
            // Stable sort by date_added: objects that share one keep the order they were added in.
            remaining = matching.enumerated().sorted {
                ($0.element.dateAdded, $0.offset) < ($1.element.dateAdded, $1.offset)
            }
            .map(\.element)
        }
        let page = Array(remaining.prefix(limit))
        let rest = Array(remaining.dropFirst(limit))
        if page.isEmpty && emptyAsBraces && !quirks.nextOnLastPage { return FakeAnswer(status: 200, body: "{}") }
        let listed = quirks.reverseWithinPage ? page.reversed() : page
        var envelope: [String: Any] = [
            "objects": listed.map { object -> [String: Any] in
                var json: [String: Any] = [
                    "id": object.id, "type": "indicator", "modified": object.modified, "created": object.modified,
                ]
                if quirks.dateAddedInObjects { json["date_added"] = object.dateAdded.description }
                return json
            }
        ]
        if !rest.isEmpty {
            if !quirks.omitMore { envelope["more"] = true }
            if !quirks.noNextTokens {
                let token = session ?? UUID().uuidString
                pagesByToken[token] = (filters, rest)
                envelope["next"] = token
            }
        } else {
            if !quirks.omitMore { envelope["more"] = false }
            if quirks.nextOnLastPage {
                let token = UUID().uuidString
                pagesByToken[token] = (filters, [])
                envelope["next"] = token
            }
        }
        var headers = ["Content-Type": "application/taxii+json;version=2.1"]
        if let clock = quirks.lastHeaderClock {
            headers["X-TAXII-Date-Added-Last"] = clock.description
        } else if let first = page.first, let last = page.last, !quirks.omitDateHeaders {
            headers["X-TAXII-Date-Added-First"] = first.dateAdded.description
            headers["X-TAXII-Date-Added-Last"] = quirks.malformedLastHeader ? "yesterday" : last.dateAdded.description
        }
        if quirks.lostAnswers.contains(requests.count) { return FakeAnswer(status: 502, body: "bad gateway") }
        let data = try! JSONSerialization.data(withJSONObject: envelope, options: [.sortedKeys])
        return FakeAnswer(status: 200, headers: headers, body: String(decoding: data, as: UTF8.self))
    }

    static func isStrictMicros(_ text: String) -> Bool {
        // YYYY-MM-DDTHH:MM:SS.ffffffZ
        let bytes = Array(text.utf8)
        return bytes.count == 27 && bytes[19] == UInt8(ascii: ".") && bytes[26] == UInt8(ascii: "Z")
    }
}

/// OTX subscribed pulses in memory: `modified_since` is inclusive, pages follow `next` (a full URL).
actor FakeOTXServer {
    var pulses: [[String: String]] = []
    var scripted: [FakeAnswer] = []
    var requests: [SeenRequest] = []
    var port = 0

    func setPort(_ port: Int) { self.port = port }
    func add(id: String, modified: String) { pulses.append(["id": id, "name": "pulse \(id)", "modified": modified]) }
    func script(_ answers: [FakeAnswer]) { scripted += answers }

    func handle(_ seen: SeenRequest) -> FakeAnswer {
        requests.append(seen)
        if !scripted.isEmpty { return scripted.removeFirst() }
        guard seen.headers["x-otx-api-key"] == "otx-secret" else {
            return FakeAnswer(status: 403, body: #"{"detail":"Authentication credentials were not provided."}"#)
        }
        let since =
            seen.query["modified_since"].flatMap { try? Timestamp(rfc3339: $0, assumeUTC: true) }
            ?? Timestamp(seconds: 0)
        let limit = Int(seen.query["limit"] ?? "") ?? 10
        let page = Int(seen.query["page"] ?? "") ?? 1
        let matching = pulses.filter {
            (try? Timestamp(rfc3339: $0["modified"]!, assumeUTC: true)).map { $0 >= since } ?? false
        }
        let slice = Array(matching.dropFirst((page - 1) * limit).prefix(limit))
        var envelope: [String: Any] = ["results": slice, "count": matching.count]
        if page * limit < matching.count {
            envelope["next"] =
                "http://127.0.0.1:\(port)/api/v1/pulses/subscribed?page=\(page + 1)&limit=\(limit)&modified_since="
                + (seen.query["modified_since"] ?? "")
        } else {
            envelope["next"] = NSNull()
        }
        let data = try! JSONSerialization.data(withJSONObject: envelope, options: [.sortedKeys])
        return FakeAnswer(status: 200, body: String(decoding: data, as: UTF8.self))
    }
}

/// Serves `handler` on 127.0.0.1 (free port) for the duration of `body`; stopped also when `body` throws.
func withFakeServer<Value: Sendable>(
    path: String, handler: @escaping @Sendable (SeenRequest) async -> FakeAnswer,
    _ body: @escaping @Sendable (Int) async throws -> Value
) async throws -> Value {
    let router = Router()
    router.get(RouterPath(path)) { request, _ -> Response in
        var query: [String: String] = [:]
        for (key, value) in request.uri.queryParameters {
            query[String(key).removingPercentEncoding ?? String(key)] = String(value)
        }
        var headers: [String: String] = [:]
        for field in request.headers { headers[field.name.canonicalName] = field.value }
        let answer = await handler(SeenRequest(path: request.uri.path, query: query, headers: headers))
        var fields = HTTPFields()
        fields[.contentType] = "application/json"
        for (name, value) in answer.headers { if let key = HTTPField.Name(name) { fields[key] = value } }
        return Response(
            status: HTTPResponse.Status(code: answer.status), headers: fields,
            body: ResponseBody(byteBuffer: ByteBuffer(string: answer.body))
        )
    }
    let app = Application(
        router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)), logger: Logger.quiet
    )
    return try await app.test(.live) { client in
        try await body(client.port!)
    }
}

/// A fresh temporary folder, removed by the caller with `removeTemporary`.
func makeTemporaryDirectory() throws -> String {
    let path = (NSTemporaryDirectory() as NSString).appendingPathComponent("collection-tests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func removeTemporary(_ path: String) {
    try? FileManager.default.removeItem(atPath: path)
}

/// A logger that drops everything (tests capture with `CapturingLogHandler` when they assert on logs).

/// An HTTP client for the collectors under test, shut down by `withHTTPClient`.
func withHTTPClient<Value: Sendable>(_ body: (HTTPClient) async throws -> Value) async throws -> Value {
    let client = HTTPClient(eventLoopGroupProvider: .singleton)
    do {
        let value = try await body(client)
        try await client.shutdown()
        return value
    } catch {
        try? await client.shutdown()
        throw error
    }
}

/// Fast retries for tests: tiny backoffs, real `Retry-After` honoured.
let testRetry = RetryPolicy(
    maxAttempts: 3, baseDelay: .milliseconds(10), maxDelay: .milliseconds(50), maxRetryAfter: .seconds(5))

func ts(_ text: String) -> Timestamp { try! Timestamp(rfc3339: text) }

extension CollectionConfiguration {
    /// The settings of `environment` alone, without command-line flags.
    init(environment: [String: String]) throws(ConfigurationKeyError) {
        try self.init(Settings(environment: environment))
    }
}
