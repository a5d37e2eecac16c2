import Foundation
import Testing
import WatermarkCore

@Suite("WatermarkUpdate decoding")
struct WatermarkUpdateTests {
    private func decode(_ json: String) throws -> WatermarkUpdate {
        try JSONDecoder().decode(WatermarkUpdate.self, from: Data(json.utf8))
    }

    private func code(_ json: String) -> String? {
        do {
            _ = try decode(json)
            return nil
        } catch let error as WatermarkError {
            return error.code
        } catch {
            return "other: \(error)"
        }
    }

    @Test("decodes the seed's body")
    func seedBody() throws {
        let update = try decode(
            #"{"timestamp":"2024-01-01T12:30:00Z","status":"success","error_message":null,"records_collected":150}"#)
        #expect(update.status == .success)
        #expect(update.timestamp?.description == "2024-01-01T12:30:00Z")
        #expect(update.recordsCollected == 150)
        #expect(update.errorMessage == nil)
    }

    @Test("a failed run needs no timestamp")
    func failedWithoutTimestamp() throws {
        let update = try decode(#"{"status":"failed","error_message":"HTTP 500 from feed"}"#)
        #expect(update.status == .failed && update.timestamp == nil && update.errorMessage == "HTTP 500 from feed")
    }

    @Test(
        "names what is wrong",
        arguments: [
            (#"{"status":"success"}"#, "missing_timestamp"),
            (#"{"timestamp":"2024-01-01T12:30:00Z"}"#, "invalid_body"),
            (#"{"timestamp":"2024-01-01T12:30:00Z","status":"done"}"#, "invalid_status"),
            (#"{"timestamp":"2024-01-01T12:30:00Z","status":7}"#, "invalid_body"),
            (#"{"timestamp":"2024-02-30T12:30:00Z","status":"success"}"#, "invalid_timestamp"),
            (#"{"timestamp":"2024-01-01T12:30:00","status":"success"}"#, "invalid_timestamp"),
            (#"{"timestamp":1704112200,"status":"success"}"#, "invalid_body"),
            (#"{"timestamp":"2024-01-01T12:30:00Z","status":"success","records_collected":"150"}"#, "invalid_body"),
            (#"{"timestamp":"2024-01-01T12:30:00Z","status":"success","records_collected":1.5}"#, "invalid_body"),
            (#"{"timestamp":"2024-01-01T12:30:00Z","status":"success","records_collected":-1}"#, "invalid_body"),
            (
                #"{"timestamp":"2024-01-01T12:30:00Z","status":"success","records_collected":99999999999999999999}"#,
                "invalid_body"
            ),
            (#"{"timestamp":"2024-01-01T12:30:00Z","status":"failed","error_message":42}"#, "invalid_body"),
            (#"{"status":"failed","error_message":"a\u0000b"}"#, "invalid_body"),
        ])
    func errors(json: String, expected: String) {
        #expect(code(json) == expected)
    }

    /// No store keeps a NUL (SQLite took the text up to it, PostgreSQL's text cannot hold one); other control
    /// characters, such as a stack trace's newlines and tabs, are kept.
    @Test("an error message with a NUL is refused, with newlines and tabs kept")
    func nulInErrorMessage() throws {
        #expect(throws: WatermarkError.invalidBody("field \"error_message\" must not contain NUL (\\u0000)")) {
            try WatermarkUpdate.failed("before\u{0}after").validate()
        }
        let trace = try decode(#"{"status":"failed","error_message":"line 1\n\tat 2\u001b"}"#)
        #expect(trace.errorMessage == "line 1\n\tat 2\u{1B}")
    }

    /// Any text becomes an error message the stores keep: NULs replaced, cut to the limit in code points.
    @Test("errorMessage(_:) makes any text a valid error message")
    func errorMessageFromAnyText() throws {
        #expect(WatermarkUpdate.errorMessage("a\u{0}b\u{0}") == "a\u{FFFD}b\u{FFFD}")
        #expect(WatermarkUpdate.errorMessage("line 1\n\tat 2") == "line 1\n\tat 2")
        #expect(WatermarkUpdate.errorMessage("éé\u{0}é", limit: 3) == "éé\u{FFFD}")
        let long = String(repeating: "\u{0}x", count: WatermarkUpdate.maxErrorMessageLength)
        let cut = WatermarkUpdate.errorMessage(long, limit: .max)
        #expect(cut.unicodeScalars.count == WatermarkUpdate.maxErrorMessageLength)
        try WatermarkUpdate.failed(cut).validate()
        #expect(WatermarkUpdate.errorMessage("abc", limit: -1) == "")
    }

    @Test("encodes null explicitly and round-trips")
    func encoding() throws {
        let update = WatermarkUpdate.failed("boom")
        let json = String(decoding: try JSONEncoder().encode(update), as: UTF8.self)
        #expect(json.contains(#""timestamp":null"#))
        #expect(try decode(json) == update)
    }
}
