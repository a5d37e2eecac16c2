import Testing
import WatermarkCore

@Suite("Timestamp")
struct TimestampTests {
    @Test(
        "round-trips every fraction width up to nanoseconds",
        arguments: [
            "2024-01-01T12:00:00Z", "2024-01-01T12:00:00.1Z", "2024-01-01T12:00:00.12Z",
            "2024-01-01T12:00:00.123456Z", "2024-01-01T12:00:00.123456789Z", "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.999999999Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z",
            "2024-02-29T00:00:00Z", "2000-02-29T23:59:59Z",
        ])
    func roundTrip(text: String) throws {
        #expect(try Timestamp(rfc3339: text).description == text)
    }

    @Test(
        "normalises offsets to UTC Z",
        arguments: [
            ("2024-01-01T12:00:00+02:00", "2024-01-01T10:00:00Z"),
            ("2024-01-01T00:30:00.5+01:00", "2023-12-31T23:30:00.5Z"),
            ("2024-02-28T23:00:00-01:30", "2024-02-29T00:30:00Z"),
            ("2024-01-01t12:00:00z", "2024-01-01T12:00:00Z"),
            ("2024-01-01T12:00:00.120000000Z", "2024-01-01T12:00:00.12Z"),
            ("2024-01-01T12:00:00-00:00", "2024-01-01T12:00:00Z"),
        ])
    func normalises(input: String, expected: String) throws {
        #expect(try Timestamp(rfc3339: input).description == expected)
    }

    @Test(
        "refuses impossible dates, missing offsets and garbage",
        arguments: [
            "2023-02-29T00:00:00Z", "2024-13-01T00:00:00Z", "2024-00-10T00:00:00Z", "2024-04-31T00:00:00Z",
            "2024-01-01T24:00:00Z", "2024-01-01T12:60:00Z", "2024-01-01T12:00:60Z", "2024-01-01T12:00:00",
            "2024-01-01 12:00:00Z", "2024-01-01", "", "yesterday", "2024-01-01T12:00:00.Z",
            "2024-01-01T12:00:00.1234567890Z", "2024-01-01T12:00:00+25:00", "2024-01-01T12:00:00+02",
            "2024-01-01T12:00:00Zjunk", "0000-01-01T00:00:00+01:00", "+2024-01-01T12:00:00Z", "2024-1-01T12:00:00Z",
            "２０２４-01-01T12:00:00Z",
        ])
    func refuses(text: String) {
        #expect(throws: TimestampError.self) { try Timestamp(rfc3339: text) }
    }

    @Test("accepts a naive timestamp as UTC only when asked (OTX)")
    func naiveUTC() throws {
        #expect(throws: TimestampError.self) { try Timestamp(rfc3339: "2024-01-01T12:00:00.123000") }
        #expect(
            try Timestamp(rfc3339: "2024-01-01T12:00:00.123000", assumeUTC: true).description
                == "2024-01-01T12:00:00.123Z")
        #expect(try Timestamp(rfc3339: "2024-01-01T12:00:00", assumeUTC: true).description == "2024-01-01T12:00:00Z")
    }

    @Test("orders by instant, and the sortable form sorts the same way as text")
    func ordering() throws {
        let texts = [
            "1969-12-31T23:59:59.5Z", "2024-01-01T12:00:00Z", "2024-01-01T12:00:00.000000001Z",
            "2024-01-01T12:00:00.1Z", "2024-01-01T13:00:00+01:00", "2024-01-01T12:00:01Z",
        ]
        let stamps = try texts.map { try Timestamp(rfc3339: $0) }
        #expect(stamps[4] == stamps[1])
        let byValue = stamps.sorted()
        let byText = stamps.sorted { $0.sortableString < $1.sortableString }
        #expect(byValue == byText)
        #expect(try Timestamp(rfc3339: "2024-01-01T12:00:00.1Z").sortableString == "2024-01-01T12:00:00.100000000Z")
    }

    @Test("fixed fraction digits truncate and never round up")
    func truncatedFormat() throws {
        let stamp = try Timestamp(rfc3339: "2024-01-01T12:00:00.123456999Z")
        #expect(stamp.formatted(fractionDigits: 6) == "2024-01-01T12:00:00.123456Z")
        #expect(
            try Timestamp(rfc3339: "2024-01-01T12:00:00Z").formatted(fractionDigits: 6) == "2024-01-01T12:00:00.000000Z"
        )
        #expect(stamp.formatted(fractionDigits: 0) == "2024-01-01T12:00:00Z")
    }

    @Test("arithmetic carries nanoseconds across seconds in both directions")
    func arithmetic() throws {
        let stamp = try Timestamp(rfc3339: "2024-01-01T12:00:00.9Z")
        #expect(stamp.adding(.milliseconds(200)).description == "2024-01-01T12:00:01.1Z")
        #expect(stamp.adding(.zero - .seconds(1) - .milliseconds(950)).description == "2024-01-01T11:59:58.95Z")
        #expect(stamp.adding(.seconds(86_400 * 366)).description == "2025-01-01T12:00:00.9Z")
        #expect(stamp.adding(.milliseconds(200)).duration(since: stamp) == .milliseconds(200))
    }

    /// A watermark forced back to the first instant a timestamp can hold, less a source's overlap, is formatted
    /// for the source's query: moving past either end stops there rather than making an instant that trapped when
    /// written (the collection service crashed at every run).
    @Test("arithmetic stops at the years 0000 and 9999")
    func arithmeticStopsAtTheEnds() throws {
        let first = try Timestamp(rfc3339: "0000-01-01T00:00:00Z")
        // Compared as seconds: an instant before the year 0000 cannot even be shown in a failure.
        try #require(first.adding(.zero - .seconds(5)).seconds == first.seconds)
        #expect(first.adding(.zero - .seconds(5)).description == "0000-01-01T00:00:00Z")
        #expect(first.adding(.zero - .seconds(5)).formatted(fractionDigits: 6) == "0000-01-01T00:00:00.000000Z")
        #expect(first.adding(.seconds(5)).description == "0000-01-01T00:00:05Z")
        let last = try Timestamp(rfc3339: "9999-12-31T23:59:59.5Z")
        try #require(last.adding(.seconds(1)).seconds == last.seconds)
        #expect(last.adding(.seconds(1)).description == "9999-12-31T23:59:59.999999999Z")
    }

    @Test("now() is close to Foundation-free wall time and has sub-second digits")
    func now() {
        let first = Timestamp.now()
        let second = Timestamp.now()
        #expect(first <= second)
        #expect(first.seconds > 1_700_000_000)
    }
}

@Suite("trimmingWhitespace")
struct TrimmingTests {
    @Test(arguments: [
        ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"), ("  x \t", "x"), ("\n\u{00A0}x y\u{2003}", "x y"),
        ("", ""), ("   ", ""), ("é", "é"),
    ])
    func trimsLikeFoundationsWhitespace(text: String, trimmed: String) {
        #expect(text.trimmingWhitespace() == trimmed)
    }
}

@Suite("SourceID")
struct SourceIDTests {
    @Test(
        "accepts the allowed alphabet up to 128 characters",
        arguments: [
            "alienvault_otx", "a", "taxii:mitre.enterprise-attack", "A-Z.a_z:0-9", String(repeating: "x", count: 128),
            "...",
        ])
    func accepts(text: String) throws {
        #expect(try SourceID(text).rawValue == text)
    }

    @Test(
        "refuses everything else with invalid_source_id",
        arguments: [
            "", ".", "..", "a/b", "a%2Fb", "a b", "ünicode", "emoji😀", String(repeating: "x", count: 129), "a\u{0}b",
            "tab\tid", "quote\"",
        ])
    func refuses(text: String) {
        #expect(throws: WatermarkError.self) { try SourceID(text) }
        #expect((try? SourceID(text)) == nil)
        do {
            _ = try SourceID(text)
        } catch {
            #expect(error.code == "invalid_source_id" && error.statusCode == 400)
        }
    }
}
