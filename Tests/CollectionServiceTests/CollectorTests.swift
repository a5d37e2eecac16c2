import AsyncHTTPClient
import Foundation
import Logging
import NIOHTTP1
import TestSupport
import Testing
import WatermarkCore

@testable import CollectionService

@Suite("TAXII 2.1 collector")
struct TAXII21CollectorTests {
    static let path = "/api1/collections/col-1/objects/"

    func collector(port: Int, client: HTTPClient, auth: SourceAuth = .none, pageSize: Int = 2) -> TAXII21Collector {
        TAXII21Collector(
            settings: TAXIISettings(apiRoot: "http://127.0.0.1:\(port)/api1", collectionID: "col-1", auth: auth),
            pageSize: pageSize,
            http: SourceHTTPClient(httpClient: client, timeout: .seconds(5), retry: testRetry, logger: Logger.quiet)
        )
    }

    /// Fetches every page like a run does.
    func fetchAll(_ collector: TAXII21Collector, since: Timestamp) async throws -> [CollectorPage] {
        var pages: [CollectorPage] = []
        var cursor: String?
        repeat {
            let page = try await collector.fetchPage(since: since, cursor: cursor)
            pages.append(page)
            cursor = page.next
        } while cursor != nil && pages.count < 20
        return pages
    }

    @Test func pagesUntilMoreIsFalseWithStrictAddedAfterAndHeaderMarks() async throws {
        let server = FakeTAXIIServer()
        for index in 1...5 {
            await server.add(
                .init(
                    id: "indicator--\(index)", modified: "2026-11-20T00:00:0\(index).000Z",
                    dateAdded: ts("2026-11-26T10:00:0\(index).123456789Z")))
        }
        let since = ts("2026-11-26T10:00:00.9999999Z")
        let pages = try await withFakeServer(path: Self.path, handler: { await server.handle($0) }) { port in
            try await withHTTPClient { client in try await fetchAll(collector(port: port, client: client), since: since)
            }
        }
        #expect(pages.map(\.records.count) == [2, 2, 1])
        #expect(pages.flatMap(\.records).map(\.id) == (1...5).map { "indicator--\($0)" })
        #expect(pages.last?.highWaterMark == ts("2026-11-26T10:00:05.123456789Z"))
        #expect(pages[0].records[0].mark == ts("2026-11-26T10:00:02.123456789Z"))
        #expect(pages[0].records[0].version == "2026-11-20T00:00:01Z")
        let requests = await server.requests
        // Truncated to microseconds, never rounded up.
        #expect(requests.allSatisfy { $0.query["added_after"] == "2026-11-26T10:00:00.999999Z" })
        #expect(requests.map { $0.query["limit"] } == ["2", "2", "2"])
        #expect(requests[0].query["next"] == nil && requests[1].query["next"] != nil)
    }

    @Test func emptyBracesPageIsTheLastPage() async throws {
        let server = FakeTAXIIServer()
        let pages = try await withFakeServer(path: Self.path, handler: { await server.handle($0) }) { port in
            try await withHTTPClient { client in
                try await fetchAll(collector(port: port, client: client), since: ts("2026-11-26T00:00:00Z"))
            }
        }
        #expect(pages.count == 1)
        #expect(pages[0].records.isEmpty && pages[0].highWaterMark == nil && pages[0].next == nil)
    }

    @Test func exclusiveBoundaryComesBackOnlyWithinTheTruncatedMicrosecond() async throws {
        let server = FakeTAXIIServer()
        await server.add(.init(id: "a", modified: "2026-11-20T00:00:00Z", dateAdded: ts("2026-11-26T10:00:00.123456Z")))
        await server.add(
            .init(id: "b", modified: "2026-11-20T00:00:00Z", dateAdded: ts("2026-11-26T10:00:00.123456789Z")))
        let (exact, nanos) = try await withFakeServer(path: Self.path, handler: { await server.handle($0) }) { port in
            try await withHTTPClient { client in
                let c = collector(port: port, client: client)
                return (
                    try await fetchAll(c, since: ts("2026-11-26T10:00:00.123456Z")),
                    try await fetchAll(c, since: ts("2026-11-26T10:00:00.123456789Z"))
                )
            }
        }
        #expect(exact.flatMap(\.records).map(\.id) == ["b"])
        // added_after is truncated to ...123456: b (added at ...123456789) comes again; the run drops it.
        #expect(nanos.flatMap(\.records).map(\.id) == ["b"])
    }

    @Test func sendsBasicAuthAndAcceptHeader() async throws {
        let server = FakeTAXIIServer()
        await server.setRequiredAuthorization("Basic YWRtaW46UGFzc3dvcmQw")
        let auth = SourceAuth.basic(username: "admin", password: Secret("Password0"))
        let pages = try await withFakeServer(path: Self.path, handler: { await server.handle($0) }) { port in
            try await withHTTPClient { client in
                try await fetchAll(collector(port: port, client: client, auth: auth), since: ts("2026-11-26T00:00:00Z"))
            }
        }
        #expect(pages.count == 1)
        #expect(await server.requests.first?.headers["authorization"] == "Basic YWRtaW46UGFzc3dvcmQw")
        #expect("\(auth)".contains("Password0") == false)
    }

    @Test func retries429HonouringRetryAfterThenSucceeds() async throws {
        let server = FakeTAXIIServer()
        await server.script([FakeAnswer(status: 429, headers: ["Retry-After": "1"], body: "{}")])
        let started = ContinuousClock.now
        let pages = try await withFakeServer(path: Self.path, handler: { await server.handle($0) }) { port in
            try await withHTTPClient { client in
                try await fetchAll(collector(port: port, client: client), since: ts("2026-11-26T00:00:00Z"))
            }
        }
        #expect(pages.count == 1)
        #expect(await server.requests.count == 2)
        #expect(ContinuousClock.now - started >= .seconds(1))
    }

    @Test func retries500ThenFailsWithAMessageThatSaysWhat() async throws {
        let server = FakeTAXIIServer()
        let boom = FakeAnswer(status: 500, body: #"{"title":"database on fire"}"#)
        await server.script([boom, boom, boom])
        await #expect {
            try await withFakeServer(path: Self.path, handler: { await server.handle($0) }) { port in
                try await withHTTPClient { client in
                    try await fetchAll(collector(port: port, client: client), since: ts("2026-11-26T00:00:00Z"))
                }
            }
        } throws: { error in
            guard let error = error as? CollectorError, case .httpStatus(500, let url, let detail) = error else {
                return false
            }
            return url.hasSuffix("/objects/") && detail == "database on fire"
        }
        #expect(await server.requests.count == 3)
    }

    @Test func tooLongRetryAfterFailsTheRunInsteadOfStalling() async throws {
        let server = FakeTAXIIServer()
        await server.script([FakeAnswer(status: 429, headers: ["Retry-After": "3600"], body: "{}")])
        await #expect(throws: CollectorError.self) {
            try await withFakeServer(path: Self.path, handler: { await server.handle($0) }) { port in
                try await withHTTPClient { client in
                    try await fetchAll(collector(port: port, client: client), since: ts("2026-11-26T00:00:00Z"))
                }
            }
        }
        #expect(await server.requests.count == 1)
    }

    @Test func garbageJSONIsMalformed() async throws {
        let server = FakeTAXIIServer()
        await server.script([FakeAnswer(status: 200, body: "<html>oops")])
        await #expect {
            try await withFakeServer(path: Self.path, handler: { await server.handle($0) }) { port in
                try await withHTTPClient { client in
                    try await fetchAll(collector(port: port, client: client), since: ts("2026-11-26T00:00:00Z"))
                }
            }
        } throws: { error in
            guard let error = error as? CollectorError, case .malformed(let detail) = error else { return false }
            return detail.contains("not valid JSON")
        }
    }

    @Test func unauthorizedIsNotRetried() async throws {
        let server = FakeTAXIIServer()
        await server.setRequiredAuthorization("Bearer right")
        await #expect(throws: CollectorError.self) {
            try await withFakeServer(path: Self.path, handler: { await server.handle($0) }) { port in
                try await withHTTPClient { client in
                    try await fetchAll(
                        collector(port: port, client: client, auth: .bearer(Secret("wrong"))),
                        since: ts("2026-11-26T00:00:00Z")
                    )
                }
            }
        }
        #expect(await server.requests.count == 1)
    }

    @Test func connectionRefusedIsATransportError() async throws {
        // Bind a port, then stop the server: nothing listens there any more.
        let port = try await withFakeServer(path: Self.path, handler: { _ in FakeAnswer(status: 200, body: "{}") }) {
            $0
        }
        await #expect {
            try await withHTTPClient { client in
                var collector = collector(port: port, client: client)
                collector.http.timeout = .seconds(1)
                return try await collector.fetchPage(since: ts("2026-11-26T00:00:00Z"), cursor: nil)
            }
        } throws: { error in
            guard let error = error as? CollectorError, case .transport = error else { return false }
            return true
        }
    }

    @Test func parseRejectsMoreWithoutAnyWayToContinue() throws {
        let response = SourceResponse(status: 200, headers: [:], body: Data(#"{"more":true,"objects":[]}"#.utf8))
        #expect(throws: CollectorError.self) { try TAXII21Collector.parse(response, url: "u") }
    }
}

@Suite("OTX collector")
struct OTXCollectorTests {
    @Test func followsNextWithTheKeyAndParsesNaiveModified() async throws {
        let server = FakeOTXServer()
        await server.add(id: "aaaaaaaaaaaaaaaaaaaaaaa1", modified: "2026-11-25T10:00:00.123000")
        await server.add(id: "aaaaaaaaaaaaaaaaaaaaaaa2", modified: "2026-11-25T11:00:00")
        await server.add(id: "aaaaaaaaaaaaaaaaaaaaaaa3", modified: "2026-11-25T12:00:00.5")
        await server.add(id: "old", modified: "2026-11-01T00:00:00")
        let records = try await withFakeServer(path: "/api/v1/pulses/subscribed", handler: { await server.handle($0) })
        {
            port in
            await server.setPort(port)
            return try await withHTTPClient { client in
                let collector = OTXCollector(
                    settings: OTXSettings(baseURL: "http://127.0.0.1:\(port)", apiKey: Secret("otx-secret")),
                    pageSize: 2,
                    http: SourceHTTPClient(
                        httpClient: client, timeout: .seconds(5), retry: testRetry, logger: Logger.quiet)
                )
                var all: [CollectedRecord] = []
                var cursor: String?
                repeat {
                    let page = try await collector.fetchPage(since: ts("2026-11-25T10:00:00.123Z"), cursor: cursor)
                    all += page.records
                    cursor = page.next
                } while cursor != nil
                return all
            }
        }
        #expect(
            records.map(\.id) == ["aaaaaaaaaaaaaaaaaaaaaaa1", "aaaaaaaaaaaaaaaaaaaaaaa2", "aaaaaaaaaaaaaaaaaaaaaaa3"])
        #expect(
            records.map(\.mark) == [
                ts("2026-11-25T10:00:00.123Z"), ts("2026-11-25T11:00:00Z"), ts("2026-11-25T12:00:00.5Z"),
            ])
        let requests = await server.requests
        #expect(requests.count == 2)
        #expect(requests[0].query["modified_since"] == "2026-11-25T10:00:00.123000")
        #expect(requests.allSatisfy { $0.headers["x-otx-api-key"] == "otx-secret" })
    }

    @Test func refusesANextOnAnotherHost() async throws {
        try await withHTTPClient { client in
            let collector = OTXCollector(
                settings: OTXSettings(baseURL: "http://127.0.0.1:1", apiKey: Secret("k")), pageSize: 2,
                http: SourceHTTPClient(httpClient: client, timeout: .seconds(1), retry: testRetry, logger: Logger.quiet)
            )
            await #expect(throws: CollectorError.self) {
                try await collector.fetchPage(since: ts("2026-11-25T00:00:00Z"), cursor: "http://evil.example/steal")
            }
        }
    }

    @Test func pulseWithoutModifiedIsMalformed() {
        #expect(throws: CollectorError.self) {
            try OTXCollector.parse(Data(#"{"results":[{"id":"x"}],"next":null}"#.utf8), url: "u")
        }
    }
}

@Suite("Directory collector")
struct DirectoryCollectorTests {
    @Test func readsObjectsArraysBundlesAndNDJSONSinceTheMark() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        try
            #"{"type":"bundle","id":"bundle--1","objects":[{"id":"indicator--1","modified":"2026-11-25T00:00:00Z"},{"id":"marking--1","created":"2026-11-25T01:00:00Z"}]}"#
            .write(toFile: dir + "/a.json", atomically: true, encoding: .utf8)
        try #"[{"id":"x1","modified":"2026-11-26T00:00:00Z"},{"id":"x0","modified":"2026-11-01T00:00:00Z"}]"#
            .write(toFile: dir + "/b.json", atomically: true, encoding: .utf8)
        try
            "{\"id\":\"p1\",\"modified\":\"2026-11-26T10:00:00.5\"}\n\n{\"id\":\"p2\",\"modified\":\"2026-11-26T11:00:00Z\"}\n"
            .write(toFile: dir + "/c.ndjson", atomically: true, encoding: .utf8)
        try "ignored".write(toFile: dir + "/.hidden.json", atomically: true, encoding: .utf8)
        try "ignored".write(toFile: dir + "/notes.txt", atomically: true, encoding: .utf8)

        let collector = DirectoryCollector(settings: DirectorySettings(path: dir))
        var all: [CollectedRecord] = []
        var cursor: String?
        var pages = 0
        repeat {
            let page = try await collector.fetchPage(since: ts("2026-11-20T00:00:00Z"), cursor: cursor)
            all += page.records
            cursor = page.next
            pages += 1
        } while cursor != nil
        #expect(pages == 3)
        #expect(all.map(\.id) == ["indicator--1", "marking--1", "x1", "p1", "p2"])
        #expect(all[1].mark == ts("2026-11-25T01:00:00Z"))
        #expect(all[3].mark == ts("2026-11-26T10:00:00.5Z"))
    }

    @Test func aRecordWithoutTimestampFailsNamingTheFile() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        try #"[{"id":"x1"}]"#.write(toFile: dir + "/bad.json", atomically: true, encoding: .utf8)
        await #expect {
            try await DirectoryCollector(settings: DirectorySettings(path: dir)).fetchPage(
                since: ts("2026-01-01T00:00:00Z"), cursor: nil)
        } throws: { error in
            "\(error)".contains("bad.json") && "\(error)".contains("x1")
        }
    }

    @Test func aMissingFolderIsAFileError() async throws {
        await #expect(throws: CollectorError.self) {
            try await DirectoryCollector(settings: DirectorySettings(path: "/nonexistent/drop")).fetchPage(
                since: ts("2026-01-01T00:00:00Z"), cursor: nil)
        }
    }
}
