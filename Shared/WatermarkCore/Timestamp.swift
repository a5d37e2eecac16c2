#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

// About 300 lines for a reason: the RFC 3339 parser, the formatter and the arithmetic of one value type, each
// needing the others.

/// An instant in UTC with nanosecond precision.
///
/// Watermarks must round-trip exactly: a collector that stores `12:00:00.123456789Z` and reads back
/// `12:00:00.123457Z` would re-read or skip records at the boundary. `Date` is a `Double` and loses
/// those digits, so this type keeps whole seconds and nanoseconds as integers and parses and formats
/// RFC 3339 itself.
public struct Timestamp: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Seconds since 1970-01-01T00:00:00Z (negative before it).
    public let seconds: Int64
    /// Nanoseconds within the second, `0..<1_000_000_000`.
    public let nanoseconds: Int32

    /// Smallest and largest instants that RFC 3339's four-digit years can express.
    static let minSeconds: Int64 = -62_167_219_200  // 0000-01-01T00:00:00Z
    static let maxSeconds: Int64 = 253_402_300_799  // 9999-12-31T23:59:59Z

    public init(seconds: Int64, nanoseconds: Int32 = 0) {
        precondition((0..<1_000_000_000).contains(nanoseconds), "nanoseconds out of range")
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    /// Seconds since 1970 with the fraction, as Prometheus writes instants (a `Double`: microsecond precision).
    public var unixSeconds: Double { Double(seconds) + Double(nanoseconds) / 1e9 }

    /// The system's real-time clock, read with nanosecond resolution.
    public static func now() -> Timestamp {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Timestamp(seconds: Int64(spec.tv_sec), nanoseconds: Int32(spec.tv_nsec))
    }

    public static func < (lhs: Timestamp, rhs: Timestamp) -> Bool {
        (lhs.seconds, lhs.nanoseconds) < (rhs.seconds, rhs.nanoseconds)
    }

    /// This instant moved by `duration` (negative moves it back), held within the years 0000 to 9999 that RFC 3339
    /// can write: a watermark forced back to `0000-01-01T00:00:00Z` less a source's overlap was an instant no
    /// formatter could write, and formatting it trapped, so the collection service crashed at every run.
    public func adding(_ duration: Duration) -> Timestamp {
        let moved = unclampedAdding(duration)
        if moved.seconds < Self.minSeconds { return Timestamp(seconds: Self.minSeconds) }
        if moved.seconds > Self.maxSeconds { return Timestamp(seconds: Self.maxSeconds, nanoseconds: 999_999_999) }
        return moved
    }

    private func unclampedAdding(_ duration: Duration) -> Timestamp {
        let (wholeSeconds, attoseconds) = duration.components
        var secs = seconds + wholeSeconds
        var nanos = Int64(nanoseconds) + attoseconds / 1_000_000_000
        if nanos >= 1_000_000_000 {
            secs += 1
            nanos -= 1_000_000_000
        } else if nanos < 0 {
            secs -= 1
            nanos += 1_000_000_000
        }
        return Timestamp(seconds: secs, nanoseconds: Int32(nanos))
    }

    /// The signed time from `other` to `self`.
    public func duration(since other: Timestamp) -> Duration {
        .seconds(seconds - other.seconds) + .nanoseconds(Int64(nanoseconds) - Int64(other.nanoseconds))
    }

    // MARK: Formatting

    /// RFC 3339 in UTC: whole seconds without a fraction, otherwise the fraction without trailing zeros.
    public var description: String { format(fraction: .trimmed) }

    /// Fixed-width form (`YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`) whose string order is time order, for storage
    /// columns that are compared and sorted as text.
    public var sortableString: String { format(fraction: .digits(9)) }

    /// The form with exactly `digits` fraction digits, truncated (never rounded up, so a filter sent as
    /// "after this instant" never skips a record stamped within the dropped digits).
    public func formatted(fractionDigits digits: Int) -> String {
        format(fraction: .digits(max(0, min(9, digits))))
    }

    private enum FractionStyle {
        case trimmed
        case digits(Int)
    }

    /// Writes the digits into a fixed buffer: string concatenation and padding were most of the cost of a
    /// collected record (every record's version and mark is formatted).
    private func format(fraction style: FractionStyle) -> String {
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secondOfDay = seconds - days * 86_400
        let (year, month, day) = Self.civil(fromDays: days)
        let fractionDigits: Int
        switch style {
        case .trimmed:
            var count = 9
            var rest = Int64(nanoseconds)
            if rest == 0 {
                count = 0
            } else {
                while rest % 10 == 0 {
                    rest /= 10
                    count -= 1
                }
            }
            fractionDigits = count
        case .digits(let count):
            fractionDigits = count
        }
        let length = 20 + (fractionDigits > 0 ? fractionDigits + 1 : 0)
        return String(unsafeUninitializedCapacity: length) { buffer in
            func put(_ value: Int64, width: Int, at offset: Int) {
                var rest = value
                for index in stride(from: offset + width - 1, through: offset, by: -1) {
                    buffer[index] = UInt8(ascii: "0") + UInt8(rest % 10)
                    rest /= 10
                }
            }
            put(year, width: 4, at: 0)
            buffer[4] = UInt8(ascii: "-")
            put(month, width: 2, at: 5)
            buffer[7] = UInt8(ascii: "-")
            put(day, width: 2, at: 8)
            buffer[10] = UInt8(ascii: "T")
            put(secondOfDay / 3600, width: 2, at: 11)
            buffer[13] = UInt8(ascii: ":")
            put(secondOfDay % 3600 / 60, width: 2, at: 14)
            buffer[16] = UInt8(ascii: ":")
            put(secondOfDay % 60, width: 2, at: 17)
            var end = 19
            if fractionDigits > 0 {
                buffer[19] = UInt8(ascii: ".")
                var scaled = Int64(nanoseconds)
                for _ in fractionDigits..<9 { scaled /= 10 }
                put(scaled, width: fractionDigits, at: 20)
                end = 20 + fractionDigits
            }
            buffer[end] = UInt8(ascii: "Z")
            return end + 1
        }
    }

    private static func pad(_ value: Int64, _ width: Int) -> String {
        let digits = String(value)
        return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
    }

    // MARK: Parsing

    /// Parses RFC 3339 (`2024-01-01T12:00:00.123456789+02:00`), normalising any offset to UTC.
    ///
    /// - Parameter assumeUTC: accept a missing offset as UTC. Only for sources whose clock is documented
    ///   as naive UTC (AlienVault OTX); the Storage API always requires an offset.
    public init(rfc3339 text: String, assumeUTC: Bool = false) throws(TimestampError) {
        let bytes = Array(text.utf8)
        var reader = Reader(bytes: bytes, text: text)
        let year = try reader.number(digits: 4, field: "year")
        try reader.expect(UInt8(ascii: "-"))
        let month = try reader.number(digits: 2, field: "month")
        try reader.expect(UInt8(ascii: "-"))
        let day = try reader.number(digits: 2, field: "day")
        guard let separator = reader.next(),
            separator == UInt8(ascii: "T") || separator == UInt8(ascii: "t")
                || (assumeUTC && separator == UInt8(ascii: " "))
        else { throw TimestampError(text, "expected 'T' between date and time") }
        let hour = try reader.number(digits: 2, field: "hour")
        try reader.expect(UInt8(ascii: ":"))
        let minute = try reader.number(digits: 2, field: "minute")
        try reader.expect(UInt8(ascii: ":"))
        let second = try reader.number(digits: 2, field: "second")
        var nanos: Int64 = 0
        if reader.peek() == UInt8(ascii: ".") {
            _ = reader.next()
            var count = 0
            while let byte = reader.peek(), (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) {
                _ = reader.next()
                count += 1
                guard count <= 9 else { throw TimestampError(text, "more than 9 fraction digits (nanoseconds)") }
                nanos = nanos * 10 + Int64(byte - UInt8(ascii: "0"))
            }
            guard count > 0 else { throw TimestampError(text, "expected digits after '.'") }
            for _ in count..<9 { nanos *= 10 }
        }
        var offsetSeconds: Int64 = 0
        switch reader.next() {
        case UInt8(ascii: "Z"), UInt8(ascii: "z"):
            break
        case let sign? where sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-"):
            let offsetHours = try reader.number(digits: 2, field: "offset hours")
            try reader.expect(UInt8(ascii: ":"))
            let offsetMinutes = try reader.number(digits: 2, field: "offset minutes")
            guard offsetHours < 24, offsetMinutes < 60 else { throw TimestampError(text, "offset out of range") }
            offsetSeconds = (offsetHours * 3600 + offsetMinutes * 60) * (sign == UInt8(ascii: "+") ? 1 : -1)
        case nil where assumeUTC:
            break
        default:
            throw TimestampError(text, "missing or malformed UTC offset (use 'Z' or '+HH:MM')")
        }
        guard reader.atEnd else { throw TimestampError(text, "unexpected characters after the offset") }
        guard (1...12).contains(month) else { throw TimestampError(text, "month \(month) does not exist") }
        guard (1...Self.daysIn(month: month, year: year)).contains(day) else {
            throw TimestampError(text, "day \(day) does not exist in \(Self.pad(year, 4))-\(Self.pad(month, 2))")
        }
        guard hour < 24, minute < 60, second < 60 else {
            throw TimestampError(text, "time of day out of range (leap seconds are not supported)")
        }
        let total =
            Self.days(fromCivil: year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
            - offsetSeconds
        guard (Self.minSeconds...Self.maxSeconds).contains(total) else {
            throw TimestampError(text, "outside the years 0000 to 9999 once converted to UTC")
        }
        self.init(seconds: total, nanoseconds: Int32(nanos))
    }

    private struct Reader {
        let bytes: [UInt8]
        let text: String
        var index = 0
        var atEnd: Bool { index == bytes.count }
        func peek() -> UInt8? { index < bytes.count ? bytes[index] : nil }
        mutating func next() -> UInt8? {
            guard index < bytes.count else { return nil }
            defer { index += 1 }
            return bytes[index]
        }
        mutating func expect(_ byte: UInt8) throws(TimestampError) {
            guard next() == byte else {
                throw TimestampError(text, "expected '\(Character(Unicode.Scalar(byte)))' at position \(index)")
            }
        }
        mutating func number(digits: Int, field: String) throws(TimestampError) -> Int64 {
            var value: Int64 = 0
            for _ in 0..<digits {
                guard let byte = next(), (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else {
                    throw TimestampError(text, "expected \(digits) digits for the \(field)")
                }
                value = value * 10 + Int64(byte - UInt8(ascii: "0"))
            }
            return value
        }
    }

    // MARK: Calendar (proleptic Gregorian, after Howard Hinnant's civil-days algorithms)

    static func daysIn(month: Int64, year: Int64) -> Int64 {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    static func days(fromCivil year: Int64, _ month: Int64, _ day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    static func civil(fromDays days: Int64) -> (Int64, Int64, Int64) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}

extension Timestamp: Codable {
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        do {
            try self.init(rfc3339: text)
        } catch {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: error.description)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// Why a string is not an RFC 3339 timestamp.
public struct TimestampError: Error, Sendable, Equatable, CustomStringConvertible {
    public let input: String
    public let reason: String

    init(_ input: String, _ reason: String) {
        self.input = input
        self.reason = reason
    }

    public var description: String {
        let shown = input.count > 64 ? String(input.prefix(64)) + "..." : input
        return "'\(shown)' is not an RFC 3339 timestamp: \(reason)"
    }
}

extension String {
    /// The text without leading and trailing white space, without Foundation: `trimmingCharacters(in:)` goes
    /// through NSString on Linux, and trimming each record's 30-byte timestamp that way was 11 % of a drop-folder
    /// collection's CPU. Text with nothing to trim (the usual case) is returned as it is.
    public func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.first, let last = scalars.last,
            first.properties.isWhitespace || last.properties.isWhitespace
        else { return self }
        var view = Substring(self).unicodeScalars
        while let head = view.first, head.properties.isWhitespace { view.removeFirst() }
        while let tail = view.last, tail.properties.isWhitespace { view.removeLast() }
        return String(view)
    }
}
