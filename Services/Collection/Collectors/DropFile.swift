import Foundation
import WatermarkCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

// Over 300 lines for a reason: the three file layouts (NDJSON, JSON array, STIX bundle) share one read window and
// one cursor, private to this class.

/// Where a drop-folder run is inside one file, carried from page to page in the cursor.
struct FilePosition: Codable, Sendable, Equatable {
    var file: String
    /// The file as it was when its first page was read: what the ledger records after the last page.
    var identity: FileIdentity
    /// The byte where reading goes on.
    var offset = 0
    /// Records read so far (array elements, or lines holding a record).
    var records = 0
    /// Lines read so far (NDJSON), for error messages.
    var lines = 0
    /// `offset` is inside the array of records (a `.json` array or a bundle's `objects`).
    var inArray = false
    /// The file's inode when the page before was read: a file renamed over it meanwhile has another, and is read
    /// from its start (its bytes at `offset` are not where the old file's next record was).
    var inode: UInt64?

    init(file: String, identity: FileIdentity) {
        self.file = file
        self.identity = identity
    }

    /// Cursors that go on inside a file start with this byte, which no file name the folder reads starts with.
    private static let marker = "\u{1}"

    var cursor: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Self.marker + String(decoding: (try? encoder.encode(self)) ?? Data(), as: UTF8.self)
    }

    /// The position a cursor names; `nil` for a cursor that is a file name (the next file starts after it).
    init?(cursor: String) {
        guard cursor.hasPrefix(Self.marker),
            let position = try? JSONDecoder().decode(Self.self, from: Data(cursor.utf8.dropFirst()))
        else { return nil }
        self = position
    }
}

/// One drop-folder file read a page at a time through a window of about a MiB, whatever its size: NDJSON line
/// by line, a `.json` array or STIX bundle element by element (the bundle's `objects` found without reading
/// the rest), a single object as one record. Only the window and the page's records are ever in memory (a
/// bundle whose `objects` come before its `type`, unusual, is read whole to learn its type).
final class DropFile {
    /// What a page of the file holds.
    struct Chunk {
        /// Each record's bytes as they are in the file.
        var records: [Data] = []
        /// Where each record is in the file: its line (NDJSON) or its number (`.json`), for errors.
        var places: [Int] = []
        /// `line` or `record`.
        var unit = "record"
        /// The file has no records after these.
        var finished = false
        /// The file ends in a line without its line break that is not (yet) a JSON record: a writer is still
        /// appending to it, so it is not read as a record, and the file is read again once it has changed.
        var incompleteTail = false
        /// The file is bad (or cut short) after these records.
        var failure: Failure?
    }

    enum Failure: Error, CustomStringConvertible {
        /// The file is not what a drop folder reads.
        case malformed(String)
        /// The file cannot be read.
        case io(String)
        /// The file ends before its JSON does (empty, an array not closed, a record cut): a writer may be at work.
        case truncated(String)

        var description: String {
            switch self {
            case .malformed(let detail), .io(let detail), .truncated(let detail): detail
            }
        }
    }

    static let windowSize = 1 << 20

    let path: String
    let name: String
    /// The open file's inode, size and last modification when it was opened.
    let inode: UInt64
    let size: Int
    let modifiedNanoseconds: Int64
    private let descriptor: Int32
    /// Bytes of the file from `base` on.
    private var window: [UInt8] = []
    /// What each read lands in before it joins the window: reading into zeros appended to the window first cost
    /// 2.3 % of a drop-folder run, appending the zeros element by element.
    private let scratch: UnsafeMutableRawBufferPointer
    private var base = 0
    private var atEnd = false
    /// The most bytes the window held at once (tests: a file is never held whole).
    private(set) var largestWindow = 0

    /// Opens the file; `nil` when it is gone.
    init?(path: String) throws(Failure) {
        self.path = path
        self.name = (path as NSString).lastPathComponent
        // A link is checked again here, on what it opens: it may have been changed since the listing looked.
        descriptor = DirectoryCollector.openInFolder(path)
        guard descriptor >= 0 else {
            if descriptor == DirectoryCollector.linkOutsideFolder { throw .io(DirectoryCollector.linkOutside) }
            if errno == ENOENT { return nil }
            throw .io(String(cString: strerror(errno)))
        }
        guard let status = FileStatus(descriptor: descriptor) else {
            let error = String(cString: strerror(errno))
            close(descriptor)
            throw .io(error)
        }
        guard status.isRegularFile else {
            close(descriptor)
            throw .io(DirectoryCollector.notAFile)
        }
        (inode, size, modifiedNanoseconds) = (status.inode, status.size, status.modifiedNanoseconds)
        // Last, so that an init that fails has nothing to free (a class's deinit runs only once it is whole).
        scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.windowSize, alignment: 16)
    }

    deinit {
        close(descriptor)
        scratch.deallocate()
    }

    /// The hash of the file's first `bytes` bytes (at most `FileIdentity.headSize`); `nil` if they cannot be read.
    func headHash(bytes: Int) -> String? {
        FileIdentity.headHash(of: descriptor, bytes: bytes)
    }

    /// The open file's identity (its status when opened, and its head now).
    func identity() throws(Failure) -> FileIdentity {
        guard let headHash = FileIdentity.headHash(of: descriptor) else { throw .io(String(cString: strerror(errno))) }
        return FileIdentity(name: name, size: size, modifiedNanoseconds: modifiedNanoseconds, headHash: headHash)
    }

    /// The next records from `position` (at most `limit`), moving `position` past them. A file found bad (or cut
    /// short) after some records of the chunk comes back with those records and the failure in `failure`: they are
    /// collected before the file is moved aside.
    func next(_ position: inout FilePosition, limit: Int, lines: Bool) throws(Failure) -> Chunk {
        var chunk = Chunk()
        do {
            if lines {
                try nextLines(&position, limit: limit, into: &chunk)
            } else {
                if !position.inArray, let whole = try openDocument(&position) { return whole }
                try nextElements(&position, limit: limit, into: &chunk)
            }
        } catch {
            if case .io = error { throw error }
            guard !chunk.records.isEmpty else { throw error }
            chunk.failure = error
        }
        return chunk
    }

    // MARK: NDJSON

    private func nextLines(_ position: inout FilePosition, limit: Int, into chunk: inout Chunk) throws(Failure) {
        if position.offset == 0 { position.offset = try textStart() }
        while chunk.records.count < limit {
            guard try load(position.offset) else { break }
            let start = position.offset - base
            guard let newline = window[start...].firstIndex(of: UInt8(ascii: "\n")) ?? (atEnd ? window.count : nil)
            else {
                try refill(keeping: position.offset)
                continue
            }
            var line = window[start..<newline]
            while let first = line.first, JSONSplitter.isWhitespace(first) { line = line.dropFirst() }
            while let last = line.last, JSONSplitter.isWhitespace(last) { line = line.dropLast() }
            if newline == window.count, !line.isEmpty,
                (try? JSONRecords.fields(Data(line), wanted: [])) == nil
            {
                chunk.incompleteTail = true
                break
            }
            position.lines += 1
            position.offset = base + min(newline + 1, window.count)
            guard !line.isEmpty else { continue }
            position.records += 1
            chunk.records.append(Data(line))
            chunk.places.append(position.lines)
            chunk.unit = "line"
        }
        if chunk.incompleteTail {
            chunk.finished = true
        } else {
            chunk.finished = try onlyWhitespaceLeft(from: position.offset) != nil
        }
    }

    // MARK: JSON documents

    /// Reads the start of a `.json` file. An array or a bundle leaves `position` at its first element (and
    /// returns `nil`); a single object, or a bundle without objects, is the whole file's chunk.
    private func openDocument(_ position: inout FilePosition) throws(Failure) -> Chunk? {
        let start = try skipWhitespace(from: try textStart())
        guard try load(start) else { throw .truncated("the file is empty") }
        switch window[start - base] {
        case UInt8(ascii: "["):
            position.offset = start + 1
            position.inArray = true
            return nil
        case UInt8(ascii: "{"):
            break
        default:
            throw .malformed("not a JSON object or array")
        }
        // The top-level object's members, one by one, until the bundle's `objects` are found.
        var isBundle: Bool?
        var objectsAt: Int?
        var index = try skipWhitespace(from: start + 1)
        if try byte(at: index) != UInt8(ascii: "}") {
            while true {
                let (key, valueStart) = try member(at: index)
                var skipped: Int?
                if key == "objects", try byte(at: valueStart) == UInt8(ascii: "["), isBundle != false {
                    if isBundle == true {
                        position.offset = valueStart + 1
                        position.inArray = true
                        return nil
                    }
                    objectsAt = valueStart
                    // Before `type` (tools that sort keys write `id`, `objects`, ..., `type`): skipped without being
                    // held, and read from here once the type says it is a bundle.
                    skipped = try skipValue(at: valueStart)
                }
                let valueEnd: Int
                if let skipped {
                    valueEnd = skipped
                } else {
                    valueEnd = try self.valueEnd(at: valueStart)
                }
                if key == "type" {
                    isBundle = window[(valueStart - base)..<(valueEnd - base)].elementsEqual(#""bundle""#.utf8)
                }
                let (next, closing) = try memberAfter(valueEnd)
                guard let next else {
                    index = closing
                    break
                }
                index = next
            }
        }
        let end = index + 1
        if isBundle == true {
            guard let objectsAt else {
                guard try onlyWhitespaceLeft(from: end) != nil else {
                    throw .malformed("something follows the JSON object")
                }
                return Chunk(finished: true)
            }
            position.offset = objectsAt + 1
            position.inArray = true
            return nil
        }
        guard try onlyWhitespaceLeft(from: end) != nil else { throw .malformed("something follows the JSON object") }
        try hold(start..<end)
        position.records = 1
        return Chunk(records: [Data(window[(start - base)..<(end - base)])], places: [0], finished: true)
    }

    private func nextElements(_ position: inout FilePosition, limit: Int, into chunk: inout Chunk) throws(Failure) {
        var needComma = position.records > 0
        while chunk.records.count < limit {
            var index = try skipWhitespace(from: position.offset)
            guard try load(index) else { throw .truncated("the array of records is not closed") }
            var byte = window[index - base]
            if byte == UInt8(ascii: "]") {
                try arrayEnded(at: index)
                position.offset = index + 1
                chunk.finished = true
                return
            }
            if needComma {
                guard byte == UInt8(ascii: ",") else {
                    throw .malformed("',' or ']' expected after record \(position.records - 1)")
                }
                index = try skipWhitespace(from: index + 1)
                byte = try self.byte(at: index)
                needComma = false
            }
            guard byte == UInt8(ascii: "{") else {
                throw .malformed("record \(position.records) is not a JSON object")
            }
            let end = try valueEnd(at: index)
            chunk.records.append(Data(window[(index - base)..<(end - base)]))
            chunk.places.append(position.records)
            position.records += 1
            position.offset = end
            needComma = true
        }
        // A full page that is the last of the file says so, sparing the run an empty page.
        let after = try skipWhitespace(from: position.offset)
        if try load(after), window[after - base] == UInt8(ascii: "]") {
            try arrayEnded(at: after)
            chunk.finished = true
        }
    }

    /// Checks what follows the array of records that `closing` ends: nothing in a `.json` array, the rest of the
    /// bundle's members and its end in a bundle. What followed was never read: records after the closing bracket
    /// (a second array appended to the file) were dropped without a word.
    private func arrayEnded(at closing: Int) throws(Failure) {
        let start = try skipWhitespace(from: try textStart())
        guard try byte(at: start) == UInt8(ascii: "{") else {
            guard try onlyWhitespaceLeft(from: closing + 1) != nil else {
                throw .malformed("something follows the array of records")
            }
            return
        }
        // The bundle's members after `objects`, to its end.
        var (next, end) = try memberAfter(closing + 1)
        while let name = next {
            let value = try member(at: name).value
            (next, end) = try memberAfter(try valueEnd(at: value))
        }
        guard try onlyWhitespaceLeft(from: end + 1) != nil else {
            throw .malformed("something follows the JSON object")
        }
    }

    /// The object member whose name starts at `index`: the name, and where its value starts.
    private func member(at index: Int) throws(Failure) -> (name: String, value: Int) {
        guard try byte(at: index) == UInt8(ascii: "\"") else { throw .malformed("a member name is missing") }
        let nameEnd = try valueEnd(at: index)
        let name = String(decoding: window[(index - base + 1)..<(nameEnd - base - 1)], as: UTF8.self)
        let colon = try skipWhitespace(from: nameEnd)
        guard try byte(at: colon) == UInt8(ascii: ":") else { throw .malformed("':' is missing after \"\(name)\"") }
        return (name, try skipWhitespace(from: colon + 1))
    }

    /// After a member's value ending at `end`: where the next member starts, or `nil` and where the object closes.
    private func memberAfter(_ end: Int) throws(Failure) -> (next: Int?, closing: Int) {
        let index = try skipWhitespace(from: end)
        let separator = try byte(at: index)
        if separator == UInt8(ascii: "}") { return (nil, index) }
        guard separator == UInt8(ascii: ",") else { throw .malformed("',' or '}' expected at byte \(index)") }
        return (try skipWhitespace(from: index + 1), index)
    }

    // MARK: The window

    /// Makes the window hold the byte at `offset` (reading on as needed); `false` when the file ends first.
    @discardableResult
    private func load(_ offset: Int) throws(Failure) -> Bool {
        if offset < base { try refill(keeping: offset, from: offset) }
        while offset >= base + window.count {
            if atEnd { return false }
            try refill(keeping: min(offset, base + window.count))
        }
        return true
    }

    /// Makes the window hold all of `range`.
    private func hold(_ range: Range<Int>) throws(Failure) {
        if range.lowerBound < base { try refill(keeping: range.lowerBound, from: range.lowerBound) }
        while base + window.count < range.upperBound {
            if atEnd { throw .truncated("the file ends in the middle of its JSON") }
            try refill(keeping: range.lowerBound)
        }
    }

    private func byte(at offset: Int) throws(Failure) -> UInt8 {
        guard try load(offset) else { throw .truncated("the file ends in the middle of its JSON") }
        return window[offset - base]
    }

    /// Drops the window's bytes before `offset` and reads up to `windowSize` more (from `from` when the window
    /// has to move back, for the rare document read twice).
    private func refill(keeping offset: Int, from restart: Int? = nil) throws(Failure) {
        if let restart {
            window.removeAll(keepingCapacity: true)
            base = restart
            atEnd = false
        } else if offset > base {
            window.removeFirst(min(offset - base, window.count))
            base = offset
        }
        let read = pread(descriptor, scratch.baseAddress!, Self.windowSize, off_t(base + window.count))
        guard read >= 0 else { throw .io(String(cString: strerror(errno))) }
        window.append(contentsOf: UnsafeRawBufferPointer(rebasing: scratch[..<read]))
        largestWindow = max(largestWindow, window.count)
        if read == 0 { atEnd = true }
    }

    /// Where the file's text starts: after a UTF-8 byte order mark, which Windows tools write and RFC 8259 lets a
    /// reader ignore (it is no part of the first record).
    private func textStart() throws(Failure) -> Int {
        for (offset, byte) in [UInt8(0xEF), 0xBB, 0xBF].enumerated() {
            guard try load(offset), window[offset - base] == byte else { return 0 }
        }
        return 3
    }

    private func skipWhitespace(from offset: Int) throws(Failure) -> Int {
        var index = offset
        while try load(index), JSONSplitter.isWhitespace(window[index - base]) { index += 1 }
        return index
    }

    /// `offset` itself when nothing but whitespace follows it, else `nil`.
    private func onlyWhitespaceLeft(from offset: Int) throws(Failure) -> Int? {
        let index = try skipWhitespace(from: offset)
        return try load(index) ? nil : offset
    }

    /// Where the JSON value at `offset` ends; the window grows until it holds the value whole.
    /// The end of the array or object at `offset`, found without holding it: strings and brackets are followed, not
    /// checked (what is inside is checked when it is read). `valueEnd` holds the value whole and scans it again from
    /// its start after every read: a bundle's `objects` met before its `type`, most of the file, took a window the
    /// size of the file (a 500 MB bundle, 0.5-1 GB: the container's memory limit, the process killed before the file
    /// was recorded, and so at every start) and time that grows with the square of its size.
    private func skipValue(at offset: Int) throws(Failure) -> Int {
        var (depth, inString, escaped) = (0, false, false)
        var index = offset
        while true {
            guard try load(index) else { throw .truncated("the file ends in the middle of its JSON") }
            let start = base
            let end: Int? = window.withUnsafeBytes { raw in
                var at = index - start
                defer { index = start + at }
                while at < raw.count {
                    let byte = raw[at]
                    at += 1
                    if inString {
                        if escaped {
                            escaped = false
                        } else if byte == UInt8(ascii: "\\") {
                            escaped = true
                        } else if byte == UInt8(ascii: "\"") {
                            inString = false
                        }
                    } else if byte == UInt8(ascii: "\"") {
                        inString = true
                    } else if byte == UInt8(ascii: "[") || byte == UInt8(ascii: "{") {
                        depth += 1
                    } else if byte == UInt8(ascii: "]") || byte == UInt8(ascii: "}") {
                        depth -= 1
                        if depth == 0 { return start + at }
                    }
                }
                return nil
            }
            if let end { return end }
        }
    }

    private func valueEnd(at offset: Int) throws(Failure) -> Int {
        guard try load(offset) else { throw .truncated("the file ends in the middle of its JSON") }
        while true {
            let (start, complete) = (offset - base, atEnd)
            let result: Result<Int?, JSONSplitter.Failure> = window.withUnsafeBytes { raw in
                do throws(JSONSplitter.Failure) {
                    return .success(try JSONSplitter.valueEnd(raw, start, complete: complete))
                } catch {
                    return .failure(error)
                }
            }
            let found: Int?
            switch result {
            case .success(let end): found = end
            case .failure(let error): throw .malformed("\(error.reason) at byte \(base + error.offset)")
            }
            if let found { return base + found }
            if atEnd { throw .truncated("the file ends in the middle of its JSON") }
            try refill(keeping: offset)
        }
    }
}
