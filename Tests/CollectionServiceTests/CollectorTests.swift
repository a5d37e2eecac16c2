import AsyncHTTPClient
import Foundation
import Logging
import NIOHTTP1
import Synchronization
import TestSupport
import Testing
import WatermarkCore

@testable import CollectionService

// Over 300 lines for a reason: the collectors' suites share the scripted HTTP server and the record builders defined
// here.

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

    /// Every page of `server`'s collection, every version, from 2026-11-26, like a run fetches them (`handler`:
    /// what answers instead of the server itself).
    func fetchAll(
        from server: FakeTAXIIServer, pageSize: Int, handler: (@Sendable (SeenRequest) async -> FakeAnswer)? = nil
    ) async throws -> [CollectorPage] {
        try await withFakeServer(path: Self.path, handler: handler ?? { await server.handle($0) }) { port in
            try await withHTTPClient { client in
                try await fetchAll(
                    collector(port: port, client: client, versions: .all, pageSize: pageSize),
                    since: ts("2026-11-26T00:00:00Z"))
            }
        }
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

    /// indicator--1 to indicator--5, each added a second after the one before, from 10:00:01.123456789.
    static func addFiveIndicators(to server: FakeTAXIIServer) async {
        for index in 1...5 {
            await server.add(
                .init(
                    id: "indicator--\(index)", modified: "2026-11-20T00:00:0\(index).000Z",
                    dateAdded: ts("2026-11-26T10:00:0\(index).123456789Z")))
        }
    }

    @Test func pagesUntilMoreIsFalseWithStrictAddedAfterAndHeaderMarks() async throws {
        let server = FakeTAXIIServer()
        await Self.addFiveIndicators(to: server)
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

    func collector(
        port: Int, client: HTTPClient, versions: TAXIIVersions, pageSize: Int = 2
    ) -> TAXII21Collector {
        var settings = TAXIISettings(apiRoot: "http://127.0.0.1:\(port)/api1", collectionID: "col-1")
        settings.versions = versions
        return TAXII21Collector(
            settings: settings, pageSize: pageSize,
            http: SourceHTTPClient(httpClient: client, timeout: .seconds(5), retry: testRetry, logger: Logger.quiet)
        )
    }

    /// An object revised twice: three versions, each added at its own instant; another object with one version.
    static func revisedObjects(_ server: FakeTAXIIServer) async {
        for (index, modified) in ["2026-11-26T09:00:00.000Z", "2026-11-26T09:10:00.000Z", "2026-11-26T09:20:00.000Z"]
            .enumerated()
        {
            await server.add(
                .init(id: "indicator--a", modified: modified, dateAdded: ts("2026-11-26T10:00:0\(index).5Z")))
        }
        await server.add(
            .init(id: "indicator--b", modified: "2026-11-26T09:00:00.000Z", dateAdded: ts("2026-11-26T10:00:05Z")))
    }

    @Test func everyVersionIsAskedForByDefaultAndEveryRequestRepeatsTheFilters() async throws {
        let server = FakeTAXIIServer()
        await Self.revisedObjects(server)
        let pages = try await withFakeServer(path: Self.path, handler: { await server.handle($0) }) { port in
            try await withHTTPClient { client in
                try await fetchAll(
                    collector(port: port, client: client, versions: .all), since: ts("2026-11-26T00:00:00Z"))
            }
        }
        let keys = pages.flatMap(\.records).map { "\($0.id)@\($0.version)" }
        #expect(
            keys == [
                "indicator--a@2026-11-26T09:00:00Z", "indicator--a@2026-11-26T09:10:00Z",
                "indicator--a@2026-11-26T09:20:00Z",
                "indicator--b@2026-11-26T09:00:00Z",
            ])
        let requests = await server.requests
        #expect(requests.count == 2)
        // The `next` request carries the same added_after and match[version] (the server refuses it otherwise).
        #expect(requests.allSatisfy { $0.query["match[version]"] == "all" })
        #expect(requests.allSatisfy { $0.query["added_after"] == "2026-11-26T00:00:00.000000Z" })
        #expect(requests[1].query["next"] != nil)
    }

    @Test func versionsLastAsksForTheServersDefault() async throws {
        let server = FakeTAXIIServer()
        await Self.revisedObjects(server)
        let pages = try await withFakeServer(path: Self.path, handler: { await server.handle($0) }) { port in
            try await withHTTPClient { client in
                try await fetchAll(
                    collector(port: port, client: client, versions: .last), since: ts("2026-11-26T00:00:00Z"))
            }
        }
        #expect(
            pages.flatMap(\.records).map { "\($0.id)@\($0.version)" } == [
                "indicator--a@2026-11-26T09:20:00Z", "indicator--b@2026-11-26T09:00:00Z",
            ])
        #expect(await server.requests.allSatisfy { $0.query["match[version]"] == nil })
    }

    @Test func aPageEndingInsideATieLosesNothingWhenTheServerPagesByDate() async throws {
        let server = FakeTAXIIServer()
        await server.setQuirks(.init(noNextTokens: true))
        // Two objects added by one POST share one date_added, and the first page ends between them.
        await server.add(
            .init(id: "indicator--0", modified: "2026-11-26T09:00:00Z", dateAdded: ts("2026-11-26T10:00:00Z")))
        await server.add(
            .init(id: "indicator--1", modified: "2026-11-26T09:00:00Z", dateAdded: ts("2026-11-26T10:00:01Z")))
        for index in 2...3 {
            await server.add(
                .init(
                    id: "indicator--\(index)", modified: "2026-11-26T09:00:00Z", dateAdded: ts("2026-11-26T10:00:01.5Z")
                ))
        }
        await server.add(
            .init(id: "indicator--4", modified: "2026-11-26T09:00:00Z", dateAdded: ts("2026-11-26T10:00:02Z")))
        let pages = try await fetchAll(from: server, pageSize: 3)
        // The object at the tie comes again on the next page (dropped by the run's dedup); none is skipped.
        #expect(
            pages.map { $0.records.map(\.id) } == [
                ["indicator--0", "indicator--1", "indicator--2"], ["indicator--2", "indicator--3", "indicator--4"],
            ])
        let afters = await server.requests.map { $0.query["added_after"] ?? "" }
        #expect(afters.first == "2026-11-26T00:00:00.000000Z")
        #expect(afters == ["2026-11-26T00:00:00.000000Z", "2026-11-26T10:00:01.499999Z"])
    }

    /// A server holding seven indicators added a second apart (10:00:01.5 to 10:00:07.5), with `quirks`.
    static func sevenIndicators(_ quirks: FakeTAXIIServer.Quirks) async -> FakeTAXIIServer {
        let server = FakeTAXIIServer()
        for index in 1...7 {
            await server.add(
                .init(
                    id: "indicator--\(index)", modified: "2026-11-20T00:00:00.000Z",
                    dateAdded: ts("2026-11-26T10:00:0\(index).5Z")))
        }
        await server.setQuirks(quirks)
        return server
    }

    @Test func aNextPageWhoseAnswerWasLostIsAskedForAgainByDateNotByItsSpentToken() async throws {
        // medallion's session moves on as it answers: sending the same `next` again would get the page after the
        // lost one. Two objects share the instant that ends the first page, so the retry must start before it.
        let server = FakeTAXIIServer()
        let added = ["10:00:01", "10:00:02", "10:00:02", "10:00:03", "10:00:04", "10:00:05", "10:00:06"]
        for (index, time) in added.enumerated() {
            await server.add(
                .init(
                    id: "indicator--\(index + 1)", modified: "2026-11-20T00:00:00.000Z",
                    dateAdded: ts("2026-11-26T\(time).5Z")))
        }
        await server.setQuirks(.init(advancingSessions: true, lostAnswers: [2]))
        let pages = try await withFakeServer(path: Self.path, handler: { await server.handle($0) }) { port in
            try await withHTTPClient { client in
                try await fetchAll(
                    collector(port: port, client: client, pageSize: 3), since: ts("2026-11-26T00:00:00Z"))
            }
        }
        let ids = Set(pages.flatMap(\.records).map(\.id))
        #expect(ids == Set((1...7).map { "indicator--\($0)" }))
        let requests = await server.requests
        #expect(requests.count == 4)
        #expect(requests[1].query["next"] != nil)
        // The retry: no token, just before the first page's last date_added.
        #expect(requests[2].query["next"] == nil)
        #expect(requests[2].query["added_after"] == "2026-11-26T10:00:02.499999Z")
        #expect(pages.last?.highWaterMark == ts("2026-11-26T10:00:06.5Z"))
    }

    /// A server whose `X-TAXII-Date-Added-Last` is its clock, with no `-First`: the header is not the page's last
    /// object, so neither the marks nor a retry go by it. A lost `next` answer is asked for again from the run's
    /// start (duplicates dropped), where asking after that clock skipped every page not read yet; the objects' own
    /// times are unknown, so the pages are marked with the server's Date of the run's first answer.
    @Test func aLastHeaderWithoutFirstIsNotTakenForThePagesLastObject() async throws {
        let server = await Self.sevenIndicators(
            .init(lastHeaderClock: ts("2030-01-01T00:00:00Z"), advancingSessions: true, lostAnswers: [2]))
        let pages = try await withFakeServer(path: Self.path, handler: { await server.handle($0) }) { port in
            try await withHTTPClient { client in
                try await fetchAll(
                    collector(port: port, client: client, pageSize: 3), since: ts("2026-11-26T00:00:00Z"))
            }
        }
        #expect(Set(pages.flatMap(\.records).map(\.id)) == Set((1...7).map { "indicator--\($0)" }))
        let requests = await server.requests
        #expect(requests.count >= 3 && requests[2].query["next"] == nil)
        #expect(requests[2].query["added_after"] == "2026-11-26T00:00:00.000000Z")
        // The server's Date, this machine's clock here; never the header's instant.
        let now = Timestamp.now()
        #expect(pages.allSatisfy { $0.highWaterMark.map { $0 <= now } ?? true }, "\(pages.map(\.highWaterMark))")
    }

    /// A server that gives `next` but leaves `more` out still has more: every page is read, where the run stopped
    /// after the first and, without date headers, marked it with the server's Date, past the pages not read.
    @Test func aNextWithoutMoreIsFollowed() async throws {
        let server = await Self.sevenIndicators(.init(omitDateHeaders: true, omitMore: true))
        let pages = try await fetchAll(from: server, pageSize: 3)
        #expect(Set(pages.flatMap(\.records).map(\.id)) == Set((1...7).map { "indicator--\($0)" }))
        #expect(await server.requests.count == 3)
        // One that puts a `next` on every last page, empty ones too: followed once, to an empty page, which ends the
        // listing (followed again, the run failed on an empty page that says more follows).
        let other = await Self.sevenIndicators(.init(omitMore: true, nextOnLastPage: true))
        let all = try await fetchAll(from: other, pageSize: 3)
        #expect(Set(all.flatMap(\.records).map(\.id)) == Set((1...7).map { "indicator--\($0)" }))
        #expect(await other.requests.count == 4)
    }

    /// A paging token the server has forgotten (medallion drops a session unused for 30 s: a run slow to write its
    /// pages) is answered 400: the page is asked for again by date, and none is missed. It failed the run.
    @Test func aForgottenPagingTokenIsAskedForAgainByDate() async throws {
        let server = await Self.sevenIndicators(.init(forgottenSessions: [2]))
        let pages = try await fetchAll(from: server, pageSize: 3)
        #expect(Set(pages.flatMap(\.records).map(\.id)) == Set((1...7).map { "indicator--\($0)" }))
        let requests = await server.requests
        #expect(requests.count == 4)
        #expect(requests[1].query["next"] != nil && requests[2].query["next"] == nil)
        #expect(requests[2].query["added_after"] == "2026-11-26T10:00:03.499999Z")
    }

    /// Versions are told apart by `modified` as sent when it is not an RFC 3339 time (`+0000`): `created`, which
    /// all versions of an object share, kept the first of them only.
    @Test func versionsWhoseModifiedIsNoRFC3339TimeStayApart() async throws {
        let objects = ["2024-02-01T00:00:00.000+0000", "2024-03-01T00:00:00.000+0000"].map {
            #"{"type":"indicator","id":"indicator--1","created":"2024-01-01T00:00:00Z","modified":"\#($0)"}"#
        }
        let body = #"{"more":false,"objects":["# + objects.joined(separator: ",") + "]}"
        let headers: HTTPHeaders = [
            "X-TAXII-Date-Added-First": "2026-11-26T10:00:00Z", "X-TAXII-Date-Added-Last": "2026-11-26T10:00:01Z",
        ]
        let page = try await TAXII21Collector.parse(
            SourceResponse(status: 200, headers: headers, body: Data(body.utf8)), url: "u")
        #expect(page.records.map(\.version) == ["2024-02-01T00:00:00.000+0000", "2024-03-01T00:00:00.000+0000"])
    }

    @Test func aWholePageOfOneInstantWithoutNextIsAClearError() async throws {
        let server = FakeTAXIIServer()
        await server.setQuirks(.init(noNextTokens: true))
        for index in 1...3 {
            await server.add(
                .init(
                    id: "indicator--\(index)", modified: "2026-11-26T09:00:00Z", dateAdded: ts("2026-11-26T10:00:01Z")))
        }
        await #expect {
            try await fetchAll(from: server, pageSize: 2)
        } throws: { error in
            "\(error)".contains("raise page_size") && "\(error)".contains("2026-11-26T10:00:01Z")
        }
    }

    /// Without the page's headers, each object's `date_added` is the server's clock; without that either, the
    /// server's `Date` (its clock too, to the second), never an object's `modified`, which is its producer's clock.
    @Test func missingOrMalformedDateHeadersFallBackToTheServersOwnTimesNeverTheCollectorsClock() async throws {
        for quirks in [
            FakeTAXIIServer.Quirks(omitDateHeaders: true, dateAddedInObjects: true),
            FakeTAXIIServer.Quirks(malformedLastHeader: true, dateAddedInObjects: true),
            FakeTAXIIServer.Quirks(omitDateHeaders: true),
        ] {
            let server = FakeTAXIIServer()
            await server.setQuirks(quirks)
            await server.add(
                .init(id: "indicator--1", modified: "2026-11-26T09:00:00Z", dateAdded: ts("2026-11-26T10:00:01Z")))
            await server.add(
                .init(id: "indicator--2", modified: "2026-11-26T09:30:00Z", dateAdded: ts("2026-11-26T10:00:02Z")))
            // The server's `Date` is refreshed once a second: it may be up to a second behind.
            let before = Timestamp(seconds: Timestamp.now().seconds - 1)
            let pages = try await fetchAll(from: server, pageSize: 5)
            let page = try #require(pages.first)
            let mark = try #require(page.highWaterMark)
            if quirks.dateAddedInObjects {
                #expect(mark == ts("2026-11-26T10:00:02Z"), "\(quirks)")
                #expect(page.warnings.count == 1, "\(page.warnings)")
            } else {
                // The fake server's `Date`, this machine's clock to the second.
                #expect(mark >= before && mark <= Timestamp.now(), "\(mark)")
                #expect(page.warnings.count == 2 && page.warnings[1].contains("without date_added"))
            }
            #expect(page.records.allSatisfy { $0.mark == mark })
            #expect(page.firstMark == nil, "no checkpoint inside a page without the server's marks")
            #expect(page.warnings[0].contains("X-TAXII-Date-Added-Last"), "\(page.warnings)")
        }
    }

    /// A server that tells no `date_added` (no headers, none in the objects) and whose producers' clocks run ahead:
    /// the objects' `modified` moved the watermark past objects the server added during the run, which the next
    /// run's `added_after` passed over. Every page of a run is marked with the server's `Date` of its first answer,
    /// carried from page to page; a later page's own `Date` (a second on here) would pass over what was added
    /// between the two. Paging such a server by date cannot be done, and says so.
    @Test func aServerThatTellsNoDateAddedIsMarkedByTheDateOfItsFirstAnswer() async throws {
        let server = FakeTAXIIServer()
        await server.setQuirks(.init(omitDateHeaders: true))
        for index in 1...4 {
            // Modified an hour ahead of the server: its producers' clocks.
            let modified = Timestamp.now().adding(.seconds(3600 + index)).description
            await server.add(
                .init(id: "indicator--\(index)", modified: modified, dateAdded: ts("2026-11-26T10:00:0\(index)Z")))
        }
        let firstAnswer = Mutex<(instant: ContinuousClock.Instant, wall: Timestamp)?>(nil)
        let before = Timestamp(seconds: Timestamp.now().seconds - 1)
        let handler: @Sendable (SeenRequest) async -> FakeAnswer = { seen in
            // The second page is answered over two seconds after the first, so that its own `Date` (which the
            // server refreshes once a second) differs from the first's.
            if let first = firstAnswer.withLock({ $0 }) {
                while ContinuousClock.now - first.instant < .milliseconds(2_100) {
                    try? await Task.sleep(for: .milliseconds(20))
                }
            } else {
                firstAnswer.withLock { $0 = (ContinuousClock.now, Timestamp.now()) }
            }
            return await server.handle(seen)
        }
        let pages = try await fetchAll(from: server, pageSize: 2, handler: handler)
        #expect(pages.map(\.records.count) == [2, 2])
        let first = try #require(pages.first?.highWaterMark)
        // The server's `Date` when it answered first: not before it started, not after the answer.
        let answered = try #require(firstAnswer.withLock { $0 }).wall
        #expect(first >= before && first <= answered, "\(first), answered at \(answered)")
        #expect(pages.allSatisfy { $0.highWaterMark == first }, "\(pages.map(\.highWaterMark))")
        #expect(pages.allSatisfy { $0.records.allSatisfy { $0.mark == first } })

        await server.setQuirks(.init(noNextTokens: true, omitDateHeaders: true))
        await #expect {
            try await fetchAll(from: server, pageSize: 2)
        } throws: { error in
            "\(error)".contains("cannot be followed by date")
        }
    }

    @Test func objectsOutOfOrderWithinAPageAreMarkedByTheServersLastDateAdded() async throws {
        let server = FakeTAXIIServer()
        await server.setQuirks(.init(reverseWithinPage: true))
        for index in 1...4 {
            await server.add(
                .init(
                    id: "indicator--\(index)", modified: "2026-11-26T09:00:00Z",
                    dateAdded: ts("2026-11-26T10:00:0\(index)Z")))
        }
        let pages = try await fetchAll(from: server, pageSize: 2)
        #expect(
            pages.map { $0.records.map(\.id) } == [
                ["indicator--2", "indicator--1"], ["indicator--4", "indicator--3"],
            ])
        #expect(pages.map(\.highWaterMark) == [ts("2026-11-26T10:00:02Z"), ts("2026-11-26T10:00:04Z")])
        #expect(pages.map(\.firstMark) == [ts("2026-11-26T10:00:01Z"), ts("2026-11-26T10:00:03Z")])
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

    /// A server that serves the last version only (OpenCTI) refuses `match[version]=all` with 400: the run's error says
    /// to set `versions: last`, where it was a bare HTTP 400. Older OpenCTI versions say "Unsupported parameters".
    @Test(arguments: ["Invalid version provided, only 'last' supported", "Unsupported parameters provided"])
    func aServerRefusingEveryVersionSaysWhatToSet(title: String) async throws {
        let server = FakeTAXIIServer()
        await server.script([FakeAnswer(status: 400, body: #"{"title":"\#(title)"}"#)])
        await #expect {
            try await withFakeServer(path: Self.path, handler: { await server.handle($0) }) { port in
                try await withHTTPClient { client in
                    try await fetchAll(
                        collector(port: port, client: client, versions: .all), since: ts("2026-11-26T00:00:00Z"))
                }
            }
        } throws: { error in
            "\(error)".contains(#"set "versions": "last""#) && "\(error)".contains(title)
        }
    }

    /// The sources' policy outlasts a gateway away for five answers (waits of up to 15.5 s in all, not slept here);
    /// four attempts gave up within 3.5 s.
    @Test func theSourcePolicyOutlastsFiveFailedAnswers() async throws {
        let server = FakeTAXIIServer()
        await Self.addFiveIndicators(to: server)
        let gateway = FakeAnswer(status: 502, body: "bad gateway")
        await server.script(Array(repeating: gateway, count: 5))
        let waits = Mutex<[Duration]>([])
        let pages = try await withFakeServer(path: Self.path, handler: { await server.handle($0) }) { port in
            try await withHTTPClient { client in
                var taxii = collector(port: port, client: client, versions: .all, pageSize: 10)
                taxii.http = SourceHTTPClient(
                    httpClient: client, timeout: .seconds(5), retry: .source, logger: Logger.quiet,
                    sleep: { wait in waits.withLock { $0.append(wait) } })
                return try await fetchAll(taxii, since: ts("2026-11-26T00:00:00Z"))
            }
        }
        #expect(pages.flatMap(\.records).count == 5)
        let slept = waits.withLock { $0 }
        #expect(slept.count == 5 && slept.allSatisfy { $0 <= .seconds(8) }, "\(slept)")
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

    @Test func parseRejectsMoreWithoutAnyWayToContinue() async throws {
        let response = SourceResponse(status: 200, headers: [:], body: Data(#"{"more":true,"objects":[]}"#.utf8))
        await #expect(throws: CollectorError.self) { try await TAXII21Collector.parse(response, url: "u") }
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

    @Test func pulseWithoutModifiedIsMalformed() async {
        await #expect(throws: CollectorError.self) {
            try await OTXCollector.parse(Data(#"{"results":[{"id":"x"}],"next":null}"#.utf8), url: "u")
        }
    }
}

@Suite("Directory collector")
struct DirectoryCollectorTests {
    static func collector(_ dir: String, state: String? = nil, pageSize: Int = 100) throws -> DirectoryCollector {
        DirectoryCollector(
            settings: DirectorySettings(path: dir),
            ledger: FileLedger(stateDirectory: state ?? dir + "-state", sourceID: try SourceID("drop")),
            pageSize: pageSize)
    }

    /// Fetches every page like a run does, committing each page.
    static func fetchAll(_ collector: DirectoryCollector) async throws -> [CollectorPage] {
        try await fetchAllMoving(collector).pages
    }

    /// Fetches every page like a run does, committing each page, with the files the commits moved aside.
    static func fetchAllMoving(
        _ collector: DirectoryCollector
    ) async throws -> (pages: [CollectorPage], rejected: [RejectedFile]) {
        var pages: [CollectorPage] = []
        var rejected: [RejectedFile] = []
        try await forEachPage(collector) { page, moved in
            pages.append(page)
            rejected += moved
        }
        return (pages, rejected)
    }

    /// Writes `<name>.ndjson` in `dir` for each name, holding one record whose id is the name.
    static func writeOneRecordFiles(_ dir: String, _ names: [String]) throws {
        for name in names {
            try "{\"id\":\"\(name)\",\"modified\":\"2026-11-26T00:00:00Z\"}\n".write(
                toFile: dir + "/\(name).ndjson", atomically: true, encoding: .utf8)
        }
    }

    /// Fetches every page like a run does, following `next`, and hands each to `each` with the files its commit
    /// moved aside (none when `commit` is false: fetched, never written).
    static func forEachPage(
        _ collector: DirectoryCollector, commit: Bool = true, from start: String? = nil,
        _ each: (CollectorPage, [RejectedFile]) throws -> Void
    ) async throws {
        var cursor = start
        repeat {
            let page = try await collector.fetchPage(since: ts("2026-11-20T00:00:00Z"), cursor: cursor)
            try each(page, commit ? try collector.pageCommitted(page) : [])
            cursor = page.next
        } while cursor != nil
    }

    @Test func readsObjectsArraysBundlesAndNDJSONWhateverTheirRecordsTimes() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
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

        let pages = try await Self.fetchAll(try Self.collector(dir))
        let all = pages.flatMap(\.records)
        // One page holds the records of as many files as it can (`page_size`, 100 here).
        #expect(pages.count == 1)
        #expect(pages[0].progress.map(\.name) == ["a.json", "b.json", "c.ndjson"])
        // x0 is older than the mark: a drop folder is an inbox, a file's records are collected whatever their age.
        #expect(all.map(\.id) == ["indicator--1", "marking--1", "x1", "x0", "p1", "p2"])
        #expect(all[1].mark == ts("2026-11-25T01:00:00Z"))
        #expect(all[4].mark == ts("2026-11-26T10:00:00.5Z"))
    }

    @Test func aFileIsCollectedOnceAndAgainOnlyWhenItChangesOrGrows() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        try "{\"id\":\"a\",\"modified\":\"2026-11-26T00:00:00Z\"}\n".write(
            toFile: dir + "/a.ndjson", atomically: true, encoding: .utf8)
        let collector = try Self.collector(dir)
        #expect(try await Self.fetchAll(collector).flatMap(\.records).map(\.id) == ["a"])
        #expect(try await Self.fetchAll(collector).flatMap(\.records).isEmpty)

        // A late file with records older than anything collected so far.
        try "{\"id\":\"old\",\"modified\":\"2020-01-01T00:00:00Z\"}\n".write(
            toFile: dir + "/0-late.ndjson", atomically: true, encoding: .utf8)
        #expect(try await Self.fetchAll(collector).flatMap(\.records).map(\.id) == ["old"])

        // A grown file is read again whole (the run's dedup drops what it already has).
        let handle = try #require(FileHandle(forWritingAtPath: dir + "/a.ndjson"))
        handle.seekToEndOfFile()
        handle.write(Data("{\"id\":\"b\",\"modified\":\"2026-11-26T01:00:00Z\"}\n".utf8))
        try handle.close()
        #expect(try await Self.fetchAll(collector).flatMap(\.records).map(\.id) == ["a", "b"])
        #expect(try await Self.fetchAll(collector).flatMap(\.records).isEmpty)
    }

    @Test func aPageNotCommittedIsReadAgain() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        try "{\"id\":\"a\",\"modified\":\"2026-11-26T00:00:00Z\"}\n".write(
            toFile: dir + "/a.ndjson", atomically: true, encoding: .utf8)
        let collector = try Self.collector(dir)
        // A crash after the fetch, before the records were on disk: the ledger does not know the file.
        _ = try await collector.fetchPage(since: ts("2026-11-20T00:00:00Z"), cursor: nil)
        #expect(try await Self.fetchAll(collector).flatMap(\.records).map(\.id) == ["a"])
    }

    @Test func anUnreadableFileIsMovedAsideWithItsReasonAndTheOthersGoOn() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        try #"[{"id":"x1"}]"#.write(toFile: dir + "/a-bad.json", atomically: true, encoding: .utf8)
        try "{not json\n".write(toFile: dir + "/b-garbage.ndjson", atomically: true, encoding: .utf8)
        try "{\"id\":\"ok\",\"modified\":\"2026-11-26T00:00:00Z\"}\n".write(
            toFile: dir + "/c-good.ndjson", atomically: true, encoding: .utf8)
        let (pages, rejected) = try await Self.fetchAllMoving(try Self.collector(dir))
        #expect(pages.flatMap(\.records).map(\.id) == ["ok"])
        #expect(rejected.map(\.name) == ["a-bad.json", "b-garbage.ndjson"])
        #expect(rejected[0].reason.contains("a-bad.json") && rejected[0].reason.contains("x1"))
        #expect(rejected[0].movedTo == dir + "/.rejected/a-bad.json")
        #expect(!FileManager.default.fileExists(atPath: dir + "/a-bad.json"))
        #expect(FileManager.default.fileExists(atPath: dir + "/.rejected/a-bad.json"))
        let reason = try String(contentsOfFile: dir + "/.rejected/b-garbage.ndjson.reason", encoding: .utf8)
        #expect(reason.contains("b-garbage.ndjson line 1 is not valid JSON"), "\(reason)")
        // Rejected files are gone from the inbox: the next pass reads nothing.
        #expect(try await Self.fetchAll(try Self.collector(dir)).flatMap(\.records).isEmpty)
    }

    /// A folder where `.rejected/` cannot be made (here a file holds its name; a read-only mount does the same) failed
    /// every run on the bad file: it is left in place, reported, and skipped until it changes; the others go on.
    @Test func anUnreadableFileThatCannotBeMovedIsLeftInPlaceAndSkippedUntilItChanges() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        try "not a folder".write(toFile: dir + "/.rejected", atomically: true, encoding: .utf8)
        try "{not json\n".write(toFile: dir + "/a-garbage.ndjson", atomically: true, encoding: .utf8)
        try Self.writeOneRecordFiles(dir, ["b-good"])
        let (pages, rejected) = try await Self.fetchAllMoving(try Self.collector(dir))
        #expect(pages.flatMap(\.records).map(\.id) == ["b-good"])
        #expect(rejected.map(\.name) == ["a-garbage.ndjson"] && rejected.first?.movedTo == nil)
        #expect(rejected.first?.leftInPlace?.contains("left in place") == true, "\(rejected)")
        #expect(FileManager.default.fileExists(atPath: dir + "/a-garbage.ndjson"))
        // Skipped while unchanged, by this collector and by the next process's.
        #expect(try await Self.fetchAllMoving(try Self.collector(dir)).rejected.isEmpty)
        // Fixed in place: read again.
        try "{\"id\":\"fixed\",\"modified\":\"2026-11-26T00:00:00Z\"}\n".write(
            toFile: dir + "/a-garbage.ndjson", atomically: true, encoding: .utf8)
        #expect(try await Self.fetchAll(try Self.collector(dir)).flatMap(\.records).map(\.id) == ["fixed"])
    }

    /// What passes by itself (a full disk, no descriptor left) fails the run so the next one moves the file; what
    /// does not (a read-only folder, no permission, a file in the way) leaves it in place. Read under each shape of
    /// error the moves throw.
    @Test func aFailureToMoveAsideIsTransientOnlyWhenItMayPass() throws {
        #expect(DirectoryCollector.isTransient(POSIXError(.ENOSPC)))
        #expect(!DirectoryCollector.isTransient(POSIXError(.EROFS)))
        #expect(DirectoryCollector.isTransient(NSError(domain: NSPOSIXErrorDomain, code: Int(EMFILE))))
        let wrapped = NSError(
            domain: NSCocoaErrorDomain, code: 642,
            userInfo: [NSUnderlyingErrorKey: NSError(domain: NSPOSIXErrorDomain, code: Int(ENOSPC))])
        #expect(DirectoryCollector.isTransient(wrapped))
        #expect(!DirectoryCollector.isTransient(CocoaError(.fileWriteNoPermission)))
        // What Foundation really throws for a full disk (its errno under a CocoaError), and for a folder made where a
        // file is.
        do {
            try Data("x".utf8).write(to: URL(fileURLWithPath: "/dev/full"))
            Issue.record("/dev/full took a write")
        } catch {
            #expect(DirectoryCollector.isTransient(error), "\(error)")
        }
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        try "file".write(toFile: dir + "/in-the-way", atomically: true, encoding: .utf8)
        do {
            try FileManager.default.createDirectory(atPath: dir + "/in-the-way", withIntermediateDirectories: true)
            Issue.record("a folder was made where a file is")
        } catch {
            #expect(!DirectoryCollector.isTransient(error), "\(error)")
        }
    }

    /// A file renamed over between two of its pages (write `.x.tmp`, rename: what the folder asks of writers) is
    /// read from its start: read on at the old file's offset, it began mid-line and was rejected whole.
    @Test func aFileReplacedBetweenItsPagesIsReadFromItsStart() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        func lines(_ prefix: String, _ pad: String) -> String {
            (1...5).map { #"{"id":"\#(prefix)\#($0)","modified":"2026-11-26T00:00:00Z","pad":"\#(pad)"}"# + "\n" }
                .joined()
        }
        try lines("old-", "").write(toFile: dir + "/feed.ndjson", atomically: true, encoding: .utf8)
        let collector = try Self.collector(dir, pageSize: 2)
        // Renamed over, and then (the same inode, as a file renamed over can get the old one's number back)
        // rewritten in place: both are read from their start.
        for (round, replace) in [true, false].enumerated() {
            let fresh = lines(round == 0 ? "new-" : "newer-", "longer lines, so the old offset falls inside one")
            let first = try await collector.fetchPage(since: ts("2026-11-20T00:00:00Z"), cursor: nil)
            #expect(first.records.count == 2)
            if replace {
                try fresh.write(toFile: dir + "/.feed.tmp", atomically: false, encoding: .utf8)
                #expect(rename(dir + "/.feed.tmp", dir + "/feed.ndjson") == 0)
            } else {
                try fresh.write(toFile: dir + "/feed.ndjson", atomically: false, encoding: .utf8)
            }
            var pages = [first]
            var rejected: [RejectedFile] = []
            try await Self.forEachPage(collector, from: first.next) { page, moved in
                pages.append(page)
                rejected += moved
            }
            #expect(rejected.map(\.reason) == [])
            let prefix = round == 0 ? "new-" : "newer-"
            #expect(pages.dropFirst().flatMap(\.records).map(\.id) == (1...5).map { "\(prefix)\($0)" })
            // Known as collected: the next pass reads nothing.
            #expect(try await Self.fetchAll(collector).flatMap(\.records).isEmpty)
            try lines("old\(round)-", "").write(toFile: dir + "/feed.ndjson", atomically: true, encoding: .utf8)
        }
    }

    /// A writer appending to a visible `.ndjson` file may be caught in the middle of a line: that line is not
    /// read as a bad record (the whole file, moved to `.rejected/`, went on being written there), and the file is
    /// read again once it has changed. A last line without a line break that is a whole record is read as one.
    @Test func aLastLineStillBeingWrittenIsReadOnceWholeAndNotRejected() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        let whole = #"{"id":"a","modified":"2026-11-26T00:00:00Z"}"#
        try (whole + "\n" + #"{"id":"b","modified":"2026-1"#).write(
            toFile: dir + "/feed.ndjson", atomically: true, encoding: .utf8)
        let collector = try Self.collector(dir)
        let (pages, rejected) = try await Self.fetchAllMoving(collector)
        #expect(rejected.isEmpty)
        #expect(pages.flatMap(\.records).map(\.id) == ["a"])
        #expect(pages.flatMap(\.warnings).contains { $0.contains("feed.ndjson line 2") })
        // Not known as collected: read again, still unfinished, nothing new.
        #expect(try await Self.fetchAll(collector).flatMap(\.records).map(\.id) == ["a"])
        let handle = try #require(FileHandle(forWritingAtPath: dir + "/feed.ndjson"))
        handle.seekToEndOfFile()
        handle.write(Data(#"1-26T01:00:00Z"}"#.utf8))  // whole now, still without a line break
        try handle.close()
        let after = try await Self.fetchAll(collector)
        #expect(after.flatMap(\.records).map(\.id) == ["a", "b"] && after.flatMap(\.warnings).isEmpty)
        #expect(try await Self.fetchAll(collector).flatMap(\.records).isEmpty)

        // A last line left cut for longer than a writer pauses (its writer died, or holds the file open with its
        // output buffered): the lines before it are collected and the file is reported, but left in place (moved,
        // an open writer went on writing into .rejected/) and skipped while unchanged, where it was read again at
        // every run. Once its writer goes on, it is read again.
        try ("{\"id\":\"c\",\"modified\":\"2026-11-26T00:00:00Z\"}\n" + #"{"id":"d","mod"#).write(
            toFile: dir + "/cut.ndjson", atomically: true, encoding: .utf8)
        try Self.makeOlder(dir + "/cut.ndjson", by: DirectoryCollector.settleTime + .seconds(5))
        let cut = try await Self.fetchAllMoving(collector)
        #expect(cut.pages.flatMap(\.records).map(\.id) == ["c"])
        try #require(cut.rejected.count == 1)
        #expect(cut.rejected[0].name == "cut.ndjson" && cut.rejected[0].reason.contains("cut.ndjson line 2"))
        #expect(cut.rejected[0].movedTo == nil && cut.rejected[0].leftInPlace?.contains("left in place") == true)
        #expect(FileManager.default.fileExists(atPath: dir + "/cut.ndjson"))
        let skipped = try await Self.fetchAllMoving(collector)
        #expect(skipped.pages.flatMap(\.records).isEmpty && skipped.rejected.isEmpty)
        let writer = try #require(FileHandle(forWritingAtPath: dir + "/cut.ndjson"))
        writer.seekToEndOfFile()
        writer.write(Data(#"ified":"2026-11-26T02:00:00Z"}"#.utf8 + [UInt8(ascii: "\n")]))
        try writer.close()
        // Read again from its start: the run's dedup drops "c", written before.
        #expect(try await Self.fetchAll(collector).flatMap(\.records).map(\.id) == ["c", "d"])
    }

    /// A file renamed over the bad one between the check and the move (the reason's writes take milliseconds) was
    /// moved to `.rejected/` unread, with the bad one's reason: it is put back for the next run, without a reason.
    @Test func aFileRenamedOverTheBadOneIsPutBackUnread() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        let collector = try Self.collector(dir)
        try "{bad\n".write(toFile: dir + "/feed.ndjson", atomically: true, encoding: .utf8)
        let bad = try #require(try DirectoryCollector.identity(of: dir + "/feed.ndjson", name: "feed.ndjson"))
        let fixed = #"{"id":"a","modified":"2026-11-26T00:00:00Z"}"# + "\n"
        try fixed.write(toFile: dir + "/feed.ndjson", atomically: true, encoding: .utf8)
        #expect(try collector.reject(FileRejection(identity: bad, reason: "feed.ndjson line 1 is not JSON")) == nil)
        #expect(try String(contentsOfFile: dir + "/feed.ndjson", encoding: .utf8) == fixed)
        #expect(!FileManager.default.fileExists(atPath: dir + "/.rejected/feed.ndjson"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/.rejected/feed.ndjson.reason"))
        #expect(try await Self.fetchAll(collector).flatMap(\.records).map(\.id) == ["a"])
    }

    /// A bundle whose `objects` come before its `type` (tools that sort keys write `id`, `objects`, ..., `type`) is
    /// read a window at a time like any other: the array was held whole (a window the size of the file) and scanned
    /// again from its start after every read. Strings holding brackets and quotes do not fool the skip.
    @Test func aBundleWithObjectsBeforeItsTypeIsNotHeldWhole() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        let count = 12_000
        let padding = String(repeating: "p", count: 300)
        let objects = (0..<count).map { index in
            #"{"id":"indicator--\#(index)","modified":"2026-11-26T00:00:00Z","#
                + #""pattern":"[x:y = '\"]}{'] \#(padding)"}"#
        }
        let text =
            #"{"id":"bundle--sorted","objects":["# + objects.joined(separator: ",")
            + #"],"spec_version":"2.0","type":"bundle"}"#
        try text.write(toFile: dir + "/sorted.json", atomically: true, encoding: .utf8)
        #expect(text.utf8.count > 4 * DropFile.windowSize)
        let file = try #require(try DropFile(path: dir + "/sorted.json"))
        var position = FilePosition(file: "sorted.json", identity: try file.identity())
        var read = 0
        while true {
            let chunk = try file.next(&position, limit: 1_000, lines: false)
            read += chunk.records.count
            if chunk.finished { break }
        }
        #expect(read == count)
        #expect(file.largestWindow <= 2 * DropFile.windowSize, "window of \(file.largestWindow) bytes")
        #expect(try await Self.fetchAll(try Self.collector(dir, pageSize: 5_000)).flatMap(\.records).count == count)
    }

    /// A file rejected under a name a file rejected before had keeps both: either may hold the only copy of records
    /// never collected (the second replaced the first before).
    @Test func aSecondRejectedFileOfTheSameNameKeepsTheFirst() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        let collector = try Self.collector(dir)
        for (round, text) in ["{first bad\n", "{second bad\n", "{third bad\n"].enumerated() {
            try text.write(toFile: dir + "/feed.ndjson", atomically: true, encoding: .utf8)
            let rejected = try await Self.fetchAllMoving(collector).rejected
            let expected = round == 0 ? "feed.ndjson" : "feed.\(round + 1).ndjson"
            #expect(rejected.map(\.movedTo) == [dir + "/.rejected/" + expected])
        }
        for (name, text) in [("feed", "{first bad"), ("feed.2", "{second bad"), ("feed.3", "{third bad")] {
            #expect(try String(contentsOfFile: dir + "/.rejected/\(name).ndjson", encoding: .utf8) == text + "\n")
            #expect(FileManager.default.fileExists(atPath: dir + "/.rejected/\(name).ndjson.reason"))
        }
    }

    /// Windows tools begin UTF-8 files with a byte order mark, which RFC 8259 lets a reader ignore: such files are
    /// collected, the mark no part of their first record (they were rejected as "not a JSON object").
    @Test func aByteOrderMarkAtTheStartOfAFileIsNotPartOfItsFirstRecord() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        let bom = Data([0xEF, 0xBB, 0xBF])
        let record = { (id: String) in #"{"id":"\#(id)","modified":"2026-11-26T00:00:00Z"}"# }
        try (bom + Data("\(record("a1"))\r\n\(record("a2"))\r\n".utf8)).write(
            to: URL(fileURLWithPath: dir + "/a.ndjson"))
        try (bom + Data("[\(record("b1")),\(record("b2"))]".utf8)).write(to: URL(fileURLWithPath: dir + "/b.json"))
        try (bom + Data(#"{"type":"bundle","id":"bundle--1","objects":[\#(record("c1"))]}"#.utf8)).write(
            to: URL(fileURLWithPath: dir + "/c.json"))
        try (bom + Data(record("d1").utf8)).write(to: URL(fileURLWithPath: dir + "/d.json"))
        let (pages, rejected) = try await Self.fetchAllMoving(try Self.collector(dir))
        #expect(rejected.map(\.reason) == [])
        let records = pages.flatMap(\.records)
        #expect(records.map(\.id) == ["a1", "a2", "b1", "b2", "c1", "d1"])
        #expect(records.allSatisfy { $0.json.first == UInt8(ascii: "{") })
    }

    /// A record `n` with text that looks like JSON structure inside its strings, padded to about `size` bytes.
    static func tricky(_ number: Int, size: Int = 200) -> String {
        let pad = String(repeating: "x", count: max(0, size - 120))
        return
            #"{ "name" : "a \"quoted\" ] } [ { name", "id":"r-\#(number)", "modified":"2026-11-25T00:00:00Z", "pad":"\#(pad)", "n":[\#(number),{"k":"}"}] }"#
    }

    @Test func largeFilesComeInPagesOfPageSizeWithEachRecordsOwnBytes() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        // Both files are larger than the reading window, so records straddle its refills.
        let count = 2_500
        let lines = (0..<count).map { Self.tricky($0, size: 900) }
        try (lines.joined(separator: "\n\n") + "\n").write(toFile: dir + "/a.ndjson", atomically: true, encoding: .utf8)
        let bundle =
            #"{"type": "bundle", "id": "bundle--1", "objects": [ "# + lines.joined(separator: " ,\n ") + "\n] }"
        try bundle.write(toFile: dir + "/b.json", atomically: true, encoding: .utf8)
        #expect(bundle.utf8.count > 2 * DropFile.windowSize)

        let pages = try await Self.fetchAll(try Self.collector(dir, pageSize: 1_000))
        // A page goes on into the next file: every page but the last is full.
        #expect(pages.map(\.records.count) == [1_000, 1_000, 1_000, 1_000, 1_000])
        let records = pages.flatMap(\.records)
        #expect(records.map(\.id) == (0..<count).map { "r-\($0)" } + (0..<count).map { "r-\($0)" })
        // Byte for byte what the file holds: key order, spaces and escapes stay.
        #expect(records.map { String(decoding: $0.json, as: UTF8.self) } == lines + lines)
        // Only the page that reads a file's end records it: the next pass reads nothing.
        #expect(pages.map { $0.progress.map(\.name) } == [[], [], ["a.ndjson"], [], ["b.json"]])
        #expect(try await Self.fetchAll(try Self.collector(dir, pageSize: 1_000)).flatMap(\.records).isEmpty)
    }

    @Test func aPrettyPrintedRecordIsKeptOnOneLine() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        let pretty = "{\r\n  \"id\": \"p\",\n  \"modified\": \"2026-11-25T00:00:00Z\",\n  \"text\": \"a\\nb\"\n}"
        try ("{\"type\": \"bundle\",\n \"objects\": [\n" + pretty + "\n]\n}").write(
            toFile: dir + "/a.json", atomically: true, encoding: .utf8)
        let records = try await Self.fetchAll(try Self.collector(dir)).flatMap(\.records)
        #expect(records.map(\.id) == ["p"])
        let json = try #require(records.first?.json)
        #expect(!json.contains(0x0A) && !json.contains(0x0D))
        #expect(
            String(decoding: json, as: UTF8.self)
                == #"{  "id": "p",  "modified": "2026-11-25T00:00:00Z",  "text": "a\nb"}"#)
    }

    @Test func aBundleWhoseObjectsComeBeforeItsTypeIsStillABundle() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        try (#"{"objects":["# + Self.tricky(1) + "," + Self.tricky(2) + #"],"id":"bundle--2","type":"bundle"}"#)
            .write(toFile: dir + "/a.json", atomically: true, encoding: .utf8)
        try #"{"id":"single","modified":"2026-11-25T00:00:00Z","objects":[{"id":"inner"}]}"#
            .write(toFile: dir + "/b.json", atomically: true, encoding: .utf8)
        try #"{"type":"bundle","id":"bundle--empty"}"#.write(toFile: dir + "/c.json", atomically: true, encoding: .utf8)
        let (pages, rejected) = try await Self.fetchAllMoving(try Self.collector(dir, pageSize: 1))
        #expect(pages.flatMap(\.records).map(\.id) == ["r-1", "r-2", "single"])
        #expect(rejected.isEmpty)
    }

    @Test func aBadRecordAfterTheFirstPagesRejectsTheFileThereAndKeepsWhatCameBefore() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        let lines = (0..<5).map { Self.tricky($0) } + [#"{"id":"r-5","modified":"#] + [Self.tricky(6)]
        try lines.joined(separator: "\n").write(toFile: dir + "/a.ndjson", atomically: true, encoding: .utf8)
        let missingComma: String = "[" + Self.tricky(7) + "," + Self.tricky(8) + " " + Self.tricky(9) + "]"
        try missingComma.write(toFile: dir + "/b.json", atomically: true, encoding: .utf8)
        try #"[{"id":"r-10","modified":"2026-11-25T00:00:00Z"},"#.write(
            toFile: dir + "/c.json", atomically: true, encoding: .utf8)
        // Cut short and untouched for longer than a writer pauses: a bad file, not one being written.
        try Self.makeOlder(dir + "/c.json", by: DirectoryCollector.settleTime + .seconds(5))
        let (pages, rejected) = try await Self.fetchAllMoving(try Self.collector(dir, pageSize: 2))
        // Every record before a file's first bad one, on the same page as the bad one too (with pages spanning
        // files, where a page ends depends on the files before: the records of the bad one's page were lost).
        #expect(pages.flatMap(\.records).map(\.id) == ["r-0", "r-1", "r-2", "r-3", "r-4", "r-7", "r-8", "r-10"])
        try #require(rejected.map(\.name) == ["a.ndjson", "b.json", "c.json"])
        #expect(rejected.map { $0.movedTo == nil } == [false, false, true], "cut short: left in place")
        #expect(rejected[0].reason.contains("a.ndjson line 6 is not valid JSON"), "\(rejected[0].reason)")
        #expect(rejected[1].reason.contains("',' or ']' expected after record 1"), "\(rejected[1].reason)")
        #expect(
            rejected[2].reason.contains("c.json is not valid JSON records: the file ends in the middle of its JSON"),
            "\(rejected[2].reason)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).filter { !$0.hasPrefix(".") } == ["c.json"])
    }

    /// Sets the file's modification time `age` into the past.
    static func makeOlder(_ path: String, by age: Duration) throws {
        try FileManager.default.setAttributes(
            [.modificationDate: Date(timeIntervalSinceNow: -Double(age.components.seconds))], ofItemAtPath: path)
    }

    /// A `.json` file copied into the folder in place and caught half written (empty, or cut inside a record) is
    /// left for the next run with a warning, not moved to `.rejected/` (where the writer's later bytes went too); it
    /// is collected once whole, and rejected if it still ends early a settle time after its last change.
    @Test func aJSONFileCaughtHalfWrittenIsReadOnceWholeAndNotRejected() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        let path = dir + "/feed.json"
        FileManager.default.createFile(atPath: path, contents: Data())
        let collector = try Self.collector(dir, pageSize: 2)
        var (pages, rejected) = try await Self.fetchAllMoving(collector)
        #expect(rejected.isEmpty && pages.flatMap(\.records).isEmpty)
        #expect(pages.flatMap(\.warnings).contains { $0.contains("feed.json the file is empty") })

        let whole = [Self.tricky(1), Self.tricky(2), Self.tricky(3)]
        try ("[" + whole[0] + "," + whole[1] + "," + #"{"id":"r-3","modi"#).write(
            toFile: path, atomically: false, encoding: .utf8)
        (pages, rejected) = try await Self.fetchAllMoving(collector)
        #expect(rejected.isEmpty && FileManager.default.fileExists(atPath: path))
        #expect(pages.flatMap(\.records).map(\.id) == ["r-1", "r-2"])
        #expect(pages.flatMap(\.warnings).contains { $0.contains("still being written") })

        try ("[" + whole.joined(separator: ",") + "]").write(toFile: path, atomically: false, encoding: .utf8)
        (pages, rejected) = try await Self.fetchAllMoving(collector)
        #expect(rejected.isEmpty && pages.flatMap(\.warnings).isEmpty)
        #expect(pages.flatMap(\.records).map(\.id) == ["r-1", "r-2", "r-3"])
        #expect(try await Self.fetchAll(collector).flatMap(\.records).isEmpty)

        // Cut short and left so: once the settle time has passed it is reported (and left in place).
        try ("[" + whole[0] + ",").write(toFile: dir + "/stalled.json", atomically: false, encoding: .utf8)
        #expect(try await Self.fetchAllMoving(collector).rejected.isEmpty)
        try Self.makeOlder(dir + "/stalled.json", by: DirectoryCollector.settleTime + .seconds(5))
        #expect(try await Self.fetchAllMoving(collector).rejected.map(\.name) == ["stalled.json"])
    }

    /// What follows a `.json` file's array of records (a second array appended, a bundle's stray text) was never
    /// read, its records dropped without a word: the file is moved aside, the records before it collected, and a
    /// bundle whose members go on after `objects` is still read whole.
    @Test func somethingAfterTheArrayOfRecordsRejectsTheFile() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        let files = [
            "a.json": "[" + Self.tricky(1) + "]\n[" + Self.tricky(2) + "]",
            "b.json": #"{"type":"bundle","objects":["# + Self.tricky(3) + #"],"id":"bundle--1"} x"#,
            "c.json": #"{"type":"bundle","objects":["# + Self.tricky(4) + #"],"id":"bundle--2","spec_version":"2.0"}"#,
            "d.json": #"{"type":"bundle","id":"bundle--3"} {}"#,
        ]
        for pageSize in [1, 100] {
            let state = dir + "-state-\(pageSize)"
            defer { removeTemporary(state) }
            for (name, text) in files { try text.write(toFile: dir + "/" + name, atomically: true, encoding: .utf8) }
            let (pages, rejected) = try await Self.fetchAllMoving(
                try Self.collector(dir, state: state, pageSize: pageSize))
            #expect(pages.flatMap(\.records).map(\.id) == ["r-1", "r-3", "r-4"], "page size \(pageSize)")
            #expect(rejected.map(\.name) == ["a.json", "b.json", "d.json"], "page size \(pageSize)")
            #expect(rejected.first?.reason.contains("something follows the array of records") == true)
        }
    }

    /// The reason a file is moved aside names its first bad record, the one collection stopped at: the check of a
    /// whole chunk named a later line, invalid JSON, before an earlier one without an id.
    @Test func theReasonNamesTheFirstBadRecord() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        let lines = [Self.tricky(0), #"{"modified":"2026-11-25T00:00:00Z"}"#, Self.tricky(2), "{not json"]
        try (lines.joined(separator: "\n") + "\n").write(toFile: dir + "/a.ndjson", atomically: true, encoding: .utf8)
        let (pages, rejected) = try await Self.fetchAllMoving(try Self.collector(dir))
        #expect(pages.flatMap(\.records).map(\.id) == ["r-0"])
        try #require(rejected.count == 1)
        #expect(rejected[0].reason.contains("a.ndjson line 2 has no \"id\""), "\(rejected[0].reason)")
    }

    /// A bad record found while the pages before it wait to be written: the file stays in the folder until they are
    /// on disk, so a crash in between loses nothing (moved at once, the file took those records out of the inbox), and
    /// a file fixed in between is read again rather than moved.
    @Test func aBadFileIsMovedAsideOnlyOnceThePagesBeforeItAreWritten() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        let good = (1...4).map { #"{"id":"g\#($0)","modified":"2026-11-26T00:00:00Z"}"# }
        try (good + ["{bad", ""]).joined(separator: "\n").write(
            toFile: dir + "/a.ndjson", atomically: true, encoding: .utf8)
        let collector = try Self.collector(dir, pageSize: 2)
        // Fetched ahead, nothing written yet: the rejection is known, the file still in the inbox.
        var pages: [CollectorPage] = []
        try await Self.forEachPage(collector, commit: false) { page, _ in pages.append(page) }
        #expect(pages.map(\.records.count) == [2, 2, 0] && pages[2].rejections.count == 1)
        #expect(FileManager.default.fileExists(atPath: dir + "/a.ndjson"))
        // The process dies here. The next run reads the file again, whole, and moves it once its records are written.
        let (again, rejected) = try await Self.fetchAllMoving(try Self.collector(dir, pageSize: 2))
        #expect(again.flatMap(\.records).map(\.id) == ["g1", "g2", "g3", "g4"])
        #expect(rejected.map(\.movedTo) == [dir + "/.rejected/a.ndjson"])
        #expect(!FileManager.default.fileExists(atPath: dir + "/a.ndjson"))

        // Found bad, then fixed before the pages before it were written: read again next time, not moved.
        try (good + ["{bad", ""]).joined(separator: "\n").write(
            toFile: dir + "/b.ndjson", atomically: true, encoding: .utf8)
        let first = try await collector.fetchPage(since: ts("2026-11-20T00:00:00Z"), cursor: nil)
        let second = try await collector.fetchPage(since: ts("2026-11-20T00:00:00Z"), cursor: first.next)
        let third = try await collector.fetchPage(since: ts("2026-11-20T00:00:00Z"), cursor: second.next)
        #expect(third.rejections.count == 1)
        try good.joined(separator: "\n").write(toFile: dir + "/b.ndjson", atomically: true, encoding: .utf8)
        for page in [first, second, third] { #expect(try collector.pageCommitted(page).isEmpty) }
        #expect(FileManager.default.fileExists(atPath: dir + "/b.ndjson"))
        let fixed = try await Self.fetchAllMoving(collector)
        #expect(fixed.pages.flatMap(\.records).map(\.id) == ["g1", "g2", "g3", "g4"] && fixed.rejected.isEmpty)
    }

    /// A folder of small files: a page takes records from as many files as `page_size` allows (a page per file cost
    /// every file the sink's fsync), records each file whose end it read, and a bad file among them is moved aside
    /// while the others' records stay in the page.
    @Test func aPageTakesRecordsFromManySmallFiles() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        for file in 0..<10 {
            let lines = (0..<3).map { #"{"id":"f\#(file)-\#($0)","modified":"2026-11-26T00:00:00Z"}"# }
            try ((file == 4 ? ["{bad"] : lines).joined(separator: "\n") + "\n").write(
                toFile: dir + "/f\(file).ndjson", atomically: true, encoding: .utf8)
        }
        let (pages, rejected) = try await Self.fetchAllMoving(try Self.collector(dir, pageSize: 7))
        #expect(pages.map(\.records.count) == [7, 7, 7, 6])
        #expect(
            pages.flatMap(\.records).map(\.id)
                == [0, 1, 2, 3, 5, 6, 7, 8, 9].flatMap { file in (0..<3).map { "f\(file)-\($0)" } })
        #expect(
            pages.map { $0.progress.map(\.name) } == [
                ["f0.ndjson", "f1.ndjson"], ["f2.ndjson", "f3.ndjson"], ["f5.ndjson", "f6.ndjson", "f7.ndjson"],
                ["f8.ndjson", "f9.ndjson"],
            ])
        #expect(pages.map(\.rejections.count) == [0, 1, 0, 0])
        #expect(rejected.map(\.name) == ["f4.ndjson"])
        #expect(try await Self.fetchAll(try Self.collector(dir, pageSize: 7)).flatMap(\.records).isEmpty)
    }

    /// A symbolic link to a file outside the drop folder is not read (whoever may write the folder could have the
    /// service read, and quote in a rejection's reason, any file it may read): the run names it and fails, as for
    /// other unreadable entries. A link to a file inside the folder is read as that file.
    @Test func aLinkOutOfTheFolderIsNotRead() async throws {
        let dir = try makeTemporaryDirectory()
        let outside = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state"); removeTemporary(outside) }
        try #"{"id":"secret","modified":"2026-11-26T00:00:00Z"}"#.write(
            toFile: outside + "/secret.json", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: dir + "/kept", withIntermediateDirectories: false)
        try #"{"id":"inside","modified":"2026-11-26T00:00:00Z"}"#.write(
            toFile: dir + "/kept/inside.json", atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(
            atPath: dir + "/a.json", withDestinationPath: outside + "/secret.json")
        try FileManager.default.createSymbolicLink(atPath: dir + "/b.json", withDestinationPath: "kept/inside.json")
        try FileManager.default.createSymbolicLink(
            atPath: dir + "/c.json", withDestinationPath: "../\((outside as NSString).lastPathComponent)/secret.json")
        var (ids, warnings): ([String], [String]) = ([], [])
        var failure: (any Error)?
        do {
            try await Self.forEachPage(try Self.collector(dir, pageSize: 10)) { page, _ in
                ids += page.records.map(\.id)
                warnings += page.warnings
            }
        } catch {
            failure = error
        }
        #expect(ids == ["inside"])
        #expect(warnings.filter { $0.contains("outside the drop folder") }.count == 2, "\(warnings)")
        #expect("\(try #require(failure))".contains("a.json"))
        #expect(!warnings.joined().contains("secret\""))
    }

    /// A folder whose name differs from the drop folder's only in how an accent is written is another folder: the
    /// link's target is compared byte for byte (as strings, `café` written both ways was one folder, and its twin's
    /// files were read).
    @Test func aLinkToAFolderThatOnlyLooksLikeTheDropFolderIsOutside() async throws {
        let base = try makeTemporaryDirectory()
        let (dir, twin) = (base + "/caf\u{E9}", base + "/cafe\u{301}")
        defer { removeTemporary(base); removeTemporary(dir + "-state") }
        for folder in [dir, twin] {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: base).count == 2)
        try #"{"id":"secret","modified":"2026-11-26T00:00:00Z"}"#.write(
            toFile: twin + "/secret.json", atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: dir + "/a.json", withDestinationPath: twin + "/secret.json")
        var (ids, warnings): ([String], [String]) = ([], [])
        do {
            try await Self.forEachPage(try Self.collector(dir)) { page, _ in
                ids += page.records.map(\.id)
                warnings += page.warnings
            }
        } catch {}
        #expect(ids.isEmpty)
        #expect(warnings.contains { $0.contains("outside the drop folder") }, "\(warnings)")
    }

    /// Entries a run cannot read (a folder or a pipe under a file's name) do not keep the folder's other files from
    /// being collected (the first one failed every run before any file after it was read, and opening the pipe
    /// waited for a writer for ever); the run then fails naming them, and so does each run until they are dealt with.
    @Test func anUnreadableEntryDoesNotStopTheOthersAndFailsTheRunAfterThem() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        try Self.writeOneRecordFiles(dir, ["a", "c"])
        try FileManager.default.createDirectory(atPath: dir + "/b.json", withIntermediateDirectories: false)
        #expect(mkfifo(dir + "/d.ndjson", 0o644) == 0)
        // A name in Latin-1 (not UTF-8) and a link to nothing were skipped as gone, without a word.
        let latin1 = Array(dir.utf8) + Array("/caf".utf8) + [0xE9] + Array(".json".utf8) + [0]
        let descriptor = latin1.withUnsafeBufferPointer { bytes in
            bytes.withMemoryRebound(to: CChar.self) { open($0.baseAddress!, O_CREAT | O_WRONLY, 0o644) }
        }
        #expect(descriptor >= 0)
        close(descriptor)
        try FileManager.default.createSymbolicLink(atPath: dir + "/e.json", withDestinationPath: dir + "/nowhere.json")
        let collector = try Self.collector(dir, pageSize: 1)
        func run() async -> (ids: [String], warnings: [String], error: CollectorError?) {
            var (ids, warnings): ([String], [String]) = ([], [])
            do {
                try await Self.forEachPage(collector) { page, _ in
                    ids += page.records.map(\.id)
                    warnings += page.warnings
                }
                return (ids, warnings, nil)
            } catch {
                return (ids, warnings, error as? CollectorError)
            }
        }
        let first = await run()
        #expect(first.ids == ["a", "c"])
        #expect(first.warnings.count == 4 && first.warnings.allSatisfy { $0.contains("skipped") })
        #expect(first.warnings.contains { $0.contains("caf\u{FFFD}.json") && $0.contains("not UTF-8") })
        #expect(first.warnings.contains { $0.contains("e.json") && $0.contains("link to a file that does not exist") })
        let message = "\(try #require(first.error))"
        #expect(
            message.contains("b.json: not a plain file")
                && message.contains("nor could caf\u{FFFD}.json, d.ndjson, e.json"), "\(message)")
        let second = await run()
        #expect(second.ids.isEmpty && second.error == first.error)
        for name in ["b.json", "d.ndjson", "e.json"] { try FileManager.default.removeItem(atPath: dir + "/" + name) }
        let removed = latin1.withUnsafeBufferPointer { bytes in
            bytes.withMemoryRebound(to: CChar.self) { unlink($0.baseAddress!) }
        }
        #expect(removed == 0)
        let third = await run()
        #expect(third.ids.isEmpty && third.error == nil && third.warnings.isEmpty)

        // Found unreadable between two pages of it (a folder now where the file was): the same, once the rest is read.
        try (["e1", "e2"].map { #"{"id":"\#($0)","modified":"2026-11-26T00:00:00Z"}"# }.joined(separator: "\n"))
            .write(toFile: dir + "/e.ndjson", atomically: true, encoding: .utf8)
        try "{\"id\":\"f\",\"modified\":\"2026-11-26T00:00:00Z\"}\n".write(
            toFile: dir + "/f.ndjson", atomically: true, encoding: .utf8)
        let page = try await collector.fetchPage(since: ts("2026-11-20T00:00:00Z"), cursor: nil)
        #expect(page.records.map(\.id) == ["e1"])
        try FileManager.default.removeItem(atPath: dir + "/e.ndjson")
        try FileManager.default.createDirectory(atPath: dir + "/e.ndjson", withIntermediateDirectories: false)
        let next = try await collector.fetchPage(since: ts("2026-11-20T00:00:00Z"), cursor: page.next)
        #expect(next.records.map(\.id) == ["f"] && next.warnings.contains { $0.contains("e.ndjson") })
        #expect(next.next == DirectoryCollector.unreadableCursor)
        await #expect(throws: CollectorError.self) {
            try await collector.fetchPage(since: ts("2026-11-20T00:00:00Z"), cursor: next.next)
        }
    }

    /// A file dropped while a run goes on is still collected by that run when it sorts after the file being read,
    /// though the run lists the folder once (and again only when that listing is used up).
    @Test func aFileDroppedDuringARunIsPickedUpInOrder() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        try Self.writeOneRecordFiles(dir, ["a", "b"])
        let collector = try Self.collector(dir, pageSize: 1)
        var ids: [String] = []
        try await Self.forEachPage(collector) { page, _ in
            ids += page.records.map(\.id)
            if ids == ["a"] {
                try "{\"id\":\"c\",\"modified\":\"2026-11-26T00:00:00Z\"}\n".write(
                    toFile: dir + "/c.ndjson", atomically: true, encoding: .utf8)
            }
        }
        #expect(ids == ["a", "b", "c"])
    }

    /// The listing a run keeps: the folder is listed at the run's start and again only when the names after the
    /// cursor are used up, which finds what was dropped meanwhile; a run over many files lists it twice, and no
    /// more, however many files keep arriving (those wait for the next run, which lists afresh).
    @Test func aRunListsTheFolderOnceAndAgainOnlyWhenItsListingIsUsedUp() throws {
        let listing = FolderListing()
        var folder = (1...500).map { String(format: "f%04d.ndjson", $0) }
        var listed = 0
        let list = { () throws(CollectorError) -> [String] in
            listed += 1
            return folder
        }
        #expect(try listing.names(after: nil, fresh: true, list: list).count == 500)
        for name in folder.dropLast() {
            #expect(try listing.names(after: name, fresh: false, list: list).first != nil)
        }
        #expect(listed == 1)
        #expect(try listing.names(after: "f0250.ndjson", fresh: false, list: list).first == "f0251.ndjson")
        folder.append("f0501.ndjson")
        #expect(try Array(listing.names(after: "f0500.ndjson", fresh: false, list: list)) == ["f0501.ndjson"])
        #expect(listed == 2)
        folder.append("f0502.ndjson")
        #expect(try listing.names(after: "f0501.ndjson", fresh: false, list: list).isEmpty)
        #expect(listed == 2)
        #expect(try listing.names(after: "a", fresh: true, list: list).count == 502)
        #expect(listed == 3)
        #expect(try Array(listing.names(after: "f0501.ndjson", fresh: false, list: list)) == ["f0502.ndjson"])
    }

    /// A file's identity hashes its first 4 KiB with FNV-1a as ledgers already written record it (values from an
    /// independent implementation): a change would have every file of every folder read again once.
    @Test func aFilesIdentityHashesItsHeadAsLedgersRecordIt() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir) }
        let content = Data(String(repeating: "0123456789abcdef", count: 320).utf8.prefix(5_000))
        try content.write(to: URL(fileURLWithPath: dir + "/a.json"))
        try Data("{}".utf8).write(to: URL(fileURLWithPath: dir + "/b.json"))
        let a = try #require(try DirectoryCollector.identity(of: dir + "/a.json", name: "a.json"))
        #expect(a.headHash == "ca01ccad1663db25" && a.size == 5_000)
        #expect(try DirectoryCollector.identity(of: dir + "/b.json", name: "b.json")?.headHash == "8f44b07b5901a25")
        #expect(FileIdentity(name: "a.json", size: 5_000, modifiedNanoseconds: 0, head: content).headHash == a.headHash)
        #expect(try DirectoryCollector.identity(of: dir + "/gone.json", name: "gone.json") == nil)
        // The identity of a file already open (one renamed over between two of its pages) is the same.
        #expect(try #require(try DropFile(path: dir + "/a.json")).identity() == a)
    }

    /// Recording a file appends one line to the ledger's journal and leaves the whole file alone (rewriting it for
    /// each file made a folder of many files quadratic); a new reader sees every file and folds the journal in.
    @Test func recordingAFileAppendsToTheJournalAndANewReaderSeesIt() throws {
        let state = try makeTemporaryDirectory()
        defer { removeTemporary(state) }
        func identity(_ name: String) -> FileIdentity {
            FileIdentity(name: name, size: 10, modifiedNanoseconds: 1, head: Data(name.utf8))
        }
        let ledger = FileLedger(stateDirectory: state, sourceID: try SourceID("drop"))
        try ledger.record([identity("a.json")])
        for index in 1...40 { try ledger.record([identity("f\(index).json")]) }
        #expect(!FileManager.default.fileExists(atPath: ledger.path))
        let journal = try String(contentsOfFile: ledger.journalPath, encoding: .utf8)
        #expect(journal.split(separator: "\n").count == 41)
        #expect(try ledger.load().count == 41)

        let reader = FileLedger(stateDirectory: state, sourceID: try SourceID("drop"))
        #expect(try reader.load().keys.sorted() == ((1...40).map { "f\($0).json" } + ["a.json"]).sorted())
        #expect(try String(contentsOfFile: ledger.journalPath, encoding: .utf8).isEmpty)
        #expect(try FileLedger(stateDirectory: state, sourceID: try SourceID("drop")).load().count == 41)
    }

    /// A journal whose last line a crash cut short: the lines before it count, the cut one does not (its file is read
    /// again), and the next record does not land behind the cut line.
    @Test func aJournalLineCutByACrashIsIgnored() throws {
        let state = try makeTemporaryDirectory()
        defer { removeTemporary(state) }
        let id = try SourceID("drop")
        let ledger = FileLedger(stateDirectory: state, sourceID: id)
        try ledger.record([FileIdentity(name: "a.json", size: 1, modifiedNanoseconds: 1, head: Data())])
        try ledger.record([FileIdentity(name: "b.json", size: 1, modifiedNanoseconds: 1, head: Data())])
        let handle = try #require(FileHandle(forWritingAtPath: ledger.journalPath))
        handle.seekToEndOfFile()
        handle.write(Data(#"{"head_hash":"1","modified_ns":1,"name":"c.js"#.utf8))
        try handle.close()

        let after = FileLedger(stateDirectory: state, sourceID: id)
        #expect(try after.load().keys.sorted() == ["a.json", "b.json"])
        try after.record([FileIdentity(name: "d.json", size: 1, modifiedNanoseconds: 1, head: Data())])
        #expect(
            try FileLedger(stateDirectory: state, sourceID: id).load().keys.sorted() == ["a.json", "b.json", "d.json"])

        // A line that is whole but not an identity is damage on disk: the files of the other lines stay known, the
        // damaged one is forgotten (read again, its records dropped by the run's dedup) and the journal kept aside;
        // failing on it stopped the source for good.
        let line = { (name: String) in
            String(
                decoding: try JSONEncoder().encode(
                    FileIdentity(name: name, size: 1, modifiedNanoseconds: 1, head: Data())), as: UTF8.self)
        }
        try Data("\(try line("e.json"))\nnot json\n\(try line("f.json"))\n".utf8)
            .write(to: URL(fileURLWithPath: ledger.journalPath))
        #expect(
            try FileLedger(stateDirectory: state, sourceID: id).load().keys.sorted() == [
                "a.json", "b.json", "d.json", "e.json", "f.json",
            ])
        let kept = try FileManager.default.contentsOfDirectory(atPath: state + "/files").filter {
            $0.hasPrefix("drop.journal.damaged-")
        }
        try #require(kept.count == 1)
        #expect(try String(contentsOfFile: state + "/files/" + kept[0], encoding: .utf8).contains("not json"))
        #expect(try String(contentsOfFile: ledger.journalPath, encoding: .utf8).isEmpty)
    }

    /// The ledger forgets the files gone from the folder when a run starts: an inbox is emptied, and the ledger of
    /// every file ever collected grew without end, read whole by every run.
    @Test func theLedgerForgetsFilesGoneFromTheFolder() async throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTemporary(dir); removeTemporary(dir + "-state") }
        try Self.writeOneRecordFiles(dir, ["a", "b", "c"])
        #expect(try await Self.fetchAll(try Self.collector(dir)).flatMap(\.records).map(\.id) == ["a", "b", "c"])
        for name in ["a", "c"] { try FileManager.default.removeItem(atPath: dir + "/\(name).ndjson") }
        #expect(try await Self.fetchAll(try Self.collector(dir)).flatMap(\.records).isEmpty)
        let ledger = FileLedger(stateDirectory: dir + "-state", sourceID: try SourceID("drop"))
        let whole = try JSONDecoder().decode(
            [FileIdentity].self, from: try #require(FileManager.default.contents(atPath: ledger.path)))
        #expect(whole.map(\.name) == ["b.ndjson"])
        // A file dropped again under a forgotten name is read again (the run's dedup drops what it repeats).
        try Self.writeOneRecordFiles(dir, ["a"])
        #expect(try await Self.fetchAll(try Self.collector(dir)).flatMap(\.records).map(\.id) == ["a"])
    }

    /// A fold that fails when the ledger is read (a full or read-only disk) does not fail a run that has nothing to
    /// record; the next record rewrites the whole ledger once it can.
    @Test func aFoldThatFailsOnReadingIsLeftToTheNextRecord() throws {
        let state = try makeTemporaryDirectory()
        defer { removeTemporary(state) }
        let id = try SourceID("drop")
        try FileLedger(stateDirectory: state, sourceID: id).record([
            FileIdentity(name: "a.json", size: 1, modifiedNanoseconds: 1, head: Data())
        ])
        let ledger = FileLedger(stateDirectory: state, sourceID: id)
        // The whole file's temporary name taken by a folder: writing the whole ledger fails.
        try FileManager.default.createDirectory(atPath: ledger.path + ".tmp", withIntermediateDirectories: false)
        #expect(try ledger.load().keys.sorted() == ["a.json"])
        #expect(try ledger.newestMark() == nil)
        // The journal stays where it is until the whole ledger holds its lines.
        #expect(try String(contentsOfFile: ledger.journalPath, encoding: .utf8).contains("a.json"))
        #expect(throws: CollectorError.self) {
            try ledger.record([FileIdentity(name: "b.json", size: 1, modifiedNanoseconds: 1, head: Data())])
        }
        try FileManager.default.removeItem(atPath: ledger.path + ".tmp")
        try ledger.record([FileIdentity(name: "c.json", size: 1, modifiedNanoseconds: 1, head: Data())])
        let whole = try JSONDecoder().decode(
            [FileIdentity].self, from: try #require(FileManager.default.contents(atPath: ledger.path)))
        #expect(whole.map(\.name) == ["a.json", "b.json", "c.json"])
    }

    /// The journal is folded into the whole file when the ledger is next read, and only then: a run appends.
    @Test func theJournalIsFoldedIntoTheLedgerWhenItIsNextRead() throws {
        let state = try makeTemporaryDirectory()
        defer { removeTemporary(state) }
        let id = try SourceID("drop")
        func files(_ range: Range<Int>) -> [FileIdentity] {
            range.map { FileIdentity(name: "f\($0)", size: 1, modifiedNanoseconds: 1, head: Data()) }
        }
        func journalLines(_ ledger: FileLedger) throws -> Int {
            try String(contentsOfFile: ledger.journalPath, encoding: .utf8).split(separator: "\n").count
        }
        func whole(_ ledger: FileLedger) throws -> Int {
            try JSONDecoder().decode(
                [FileIdentity].self, from: try #require(FileManager.default.contents(atPath: ledger.path))
            ).count
        }
        let first = FileLedger(stateDirectory: state, sourceID: id)
        for page in 0..<20 { try first.record(files(page * 10..<page * 10 + 10)) }
        #expect(try journalLines(first) == 200 && !FileManager.default.fileExists(atPath: first.path))

        let second = FileLedger(stateDirectory: state, sourceID: id)
        #expect(try second.load().count == 200)
        #expect(try whole(second) == 200 && journalLines(second) == 0)
        try second.record(files(200..<205))
        #expect(try whole(second) == 200 && journalLines(second) == 5)
        #expect(try FileLedger(stateDirectory: state, sourceID: id).load().count == 205)
        #expect(try whole(second) == 205 && journalLines(second) == 0)
    }

    /// An append that fails is reported, and the next record rewrites the whole ledger (the journal may end in a cut
    /// line) rather than append behind it.
    @Test func aFailedAppendIsReportedAndTheNextRecordRewritesTheLedger() throws {
        let state = try makeTemporaryDirectory()
        defer { removeTemporary(state) }
        let ledger = FileLedger(stateDirectory: state, sourceID: try SourceID("drop"))
        try ledger.record([FileIdentity(name: "a", size: 1, modifiedNanoseconds: 1, head: Data())])
        try FileManager.default.removeItem(atPath: ledger.journalPath)
        try FileManager.default.createDirectory(atPath: ledger.journalPath, withIntermediateDirectories: false)
        #expect(throws: CollectorError.self) {
            try ledger.record([FileIdentity(name: "b", size: 1, modifiedNanoseconds: 1, head: Data())])
        }
        try FileManager.default.removeItem(atPath: ledger.journalPath)
        try ledger.record([FileIdentity(name: "c", size: 1, modifiedNanoseconds: 1, head: Data())])
        let whole = try JSONDecoder().decode(
            [FileIdentity].self, from: try #require(FileManager.default.contents(atPath: ledger.path)))
        #expect(whole.map(\.name) == ["a", "b", "c"])
        #expect(try String(contentsOfFile: ledger.journalPath, encoding: .utf8).isEmpty)
    }

    @Test func aMissingFolderIsAFileError() async throws {
        await #expect(throws: CollectorError.self) {
            try await Self.collector("/nonexistent/drop", state: "/nonexistent/state").fetchPage(
                since: ts("2026-01-01T00:00:00Z"), cursor: nil)
        }
    }
}
