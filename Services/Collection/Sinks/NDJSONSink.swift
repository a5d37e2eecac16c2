import Foundation
import Synchronization
import WatermarkCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The records of one source as NDJSON files `DATA_DIR/<source_id>/<yyyy-mm-dd>.ndjson` (UTC day of
/// collection), one line per record: `{"source_id","id","version","mark","collected_at","record"}`.
///
/// Exactly-once rests on two things here: `append` returns only once the lines are on disk (file fsynced, and
/// the folder too when a file was created), and the `DedupIndex` built from these files tells the run which
/// records already made it, so whatever a crash made the source send again is dropped. A torn last line (a crash in the middle
/// of a write) is cut off by `recover()` and before the next append, and never counted when reading.
struct NDJSONSink: Sendable {
    let directory: String
    let sourceID: SourceID
    /// How an append makes its file durable (`fsync`), and a folder's entries (`fsyncDirectory`): tests fail them.
    var syncFile: @Sendable (Int32) -> Int32 = { fsync($0) }
    var syncFolder: @Sendable (String) throws(SinkError) -> Void = { path throws(SinkError) in
        try NDJSONSink.fsyncDirectory(path)
    }

    /// The source folders this process has synced, with the folder above them, since it started.
    private static let syncedFolders = Mutex<Set<String>>([])

    init(dataDirectory: String, sourceID: SourceID) {
        self.directory = (dataDirectory as NSString).appendingPathComponent(sourceID.rawValue)
        self.sourceID = sourceID
    }

    /// The files of this source, newest first: plain files only. A folder (or a link to nothing) under such a name,
    /// or a file removed since the folder was listed, failed every run of the source when opened.
    func files() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter {
            $0.hasSuffix(".ndjson") && !$0.hasPrefix(".")
                && FileStatus(path: (directory as NSString).appendingPathComponent($0))?.isRegularFile == true
        }.sorted(by: >)
    }

    /// The size of one of the source's files; `nil` when it is gone (removed since the folder was listed, as a
    /// shipper removes old days).
    func size(of name: String) throws(SinkError) -> Int? {
        let path = (directory as NSString).appendingPathComponent(name)
        guard let status = FileStatus(path: path) else {
            if errno == ENOENT { return nil }
            throw SinkError(path: path, operation: "stat", errno: errno)
        }
        return status.size
    }

    /// The keys of the complete lines of `name` from byte `offset` on, read a chunk of `chunkBytes` at a time:
    /// `body` gets each chunk's keys in file order and where its last complete line ends. Only one chunk (or one
    /// line longer than a chunk) is held at a time: rebuilding a lost index read whole day files into memory,
    /// a gigabyte for a million-record day.
    ///
    /// A last line without its newline is torn, exactly as `repairTail` decides before the next append, so
    /// reading and repairing agree: a record whose line was cut (even one that is complete JSON) does not count
    /// as written and is written again.
    func forEachKeys(
        in name: String, from offset: Int, chunkBytes: Int = 4 << 20,
        _ body: (_ keys: [RecordKey], _ end: Int) throws(SinkError) -> Void
    ) throws(SinkError) {
        let path = (directory as NSString).appendingPathComponent(name)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0, errno == ENOENT { return }  // removed since the folder was listed: nothing left to index
        guard fd >= 0 else { throw SinkError(path: path, operation: "open", errno: errno) }
        defer { close(fd) }
        var chunk = [UInt8](repeating: 0, count: max(1, chunkBytes))
        var pending: [UInt8] = []  // read, not yet taken: from `start` on
        var start = offset
        var position = offset
        while true {
            let count = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(position)) }
            if count < 0, errno == EINTR { continue }
            guard count >= 0 else { throw SinkError(path: path, operation: "read", errno: errno) }
            if count == 0 { return }
            position += count
            pending.append(contentsOf: chunk[0..<count])
            guard let lastNewline = pending.lastIndex(of: UInt8(ascii: "\n")) else { continue }
            let keys = pending[...lastNewline].split(separator: UInt8(ascii: "\n")).compactMap {
                Self.decodeLine(Data($0))?.key
            }
            start += lastNewline + 1
            pending.removeSubrange(...lastNewline)
            try body(keys, start)
        }
    }

    /// The lines of `data` that end with a newline; a last line without one is torn and left out.
    static func completeLines(_ data: Data) -> [Data.SubSequence] {
        var lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        lines.removeLast()  // after the last newline: empty, or a torn line
        return lines.filter { !$0.isEmpty }
    }

    /// Cuts the torn last line of every file of the source (a crash in the middle of an append), so what is
    /// on disk is exactly what `forEachKeys(in:from:)` and the index count. A run calls it before reading the sink.
    func recover() throws(SinkError) {
        var isFolder: ObjCBool = false
        if FileManager.default.fileExists(atPath: directory, isDirectory: &isFolder), isFolder.boolValue {
            _ = try syncFoldersOnceInProcess()
        }
        for name in files() {
            let path = (directory as NSString).appendingPathComponent(name)
            var fd = open(path, O_RDWR | O_CLOEXEC)
            // A file made read-only (archived, immutable) is only read: its end is checked, and cut only if torn,
            // which then fails as it must. One removed since the listing is gone.
            if fd < 0, [EACCES, EPERM, EROFS].contains(errno) { fd = open(path, O_RDONLY | O_CLOEXEC) }
            if fd < 0, errno == ENOENT { continue }
            guard fd >= 0 else { throw SinkError(path: path, operation: "open", errno: errno) }
            defer { close(fd) }
            _ = try Self.repairTail(fd: fd, path: path)
        }
    }

    /// Every record of the source, in file order (for tests and tools).
    func allEntries() -> [SinkEntry] {
        files().reversed().flatMap { name -> [SinkEntry] in
            let path = (directory as NSString).appendingPathComponent(name)
            guard let data = try? Data(contentsOf: URL(fileURLWithPath: path)) else { return [] }
            return Self.completeLines(data).compactMap { Self.decodeLine(Data($0)) }
        }
    }

    /// Appends the records and fsyncs before returning; says which file they went to and where it now ends
    /// (`nil` when there was nothing to write).
    @discardableResult
    func append(_ records: [CollectedRecord], collectedAt: Timestamp) throws(SinkError) -> (file: String, end: Int)? {
        guard !records.isEmpty else { return nil }
        let createdFolder = try ensureDirectory()
        let name = String(collectedAt.description.prefix(10)) + ".ndjson"
        let path = (directory as NSString).appendingPathComponent(name)
        let existed = FileManager.default.fileExists(atPath: path)
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SinkError(path: path, operation: "open", errno: errno) }
        defer { close(fd) }
        var end = try Self.repairTail(fd: fd, path: path)

        let stamp = Array(collectedAt.description.utf8)
        let source = Self.jsonString(sourceID.rawValue)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(records.reduce(0) { $0 + $1.json.count + $1.id.utf8.count + 160 })
        // The records of a page mostly share one mark (TAXII's page mark): formatted once per run of equal marks.
        var mark = (time: records[0].mark, text: Array(records[0].mark.description.utf8))
        for record in records {
            if mark.time != record.mark { mark = (record.mark, Array(record.mark.description.utf8)) }
            bytes += #"{"source_id":"#.utf8
            bytes += source
            bytes += #","id":"#.utf8
            Self.appendJSONString(record.id, to: &bytes)
            bytes += #","version":"#.utf8
            Self.appendJSONString(record.version, to: &bytes)
            bytes += #","mark":""#.utf8
            bytes += mark.text
            bytes += #"","collected_at":""#.utf8
            bytes += stamp
            bytes += #"","record":"#.utf8
            bytes += record.json
            bytes += "}\n".utf8
        }
        let start = end
        do throws(SinkError) {
            var offset = 0
            while offset < bytes.count {
                let written = bytes.withUnsafeBytes { raw in
                    pwrite(fd, raw.baseAddress! + offset, raw.count - offset, off_t(end))
                }
                if written < 0 {
                    if errno == EINTR { continue }
                    throw SinkError(path: path, operation: "write", errno: errno)
                }
                offset += written
                end += written
            }
            guard syncFile(fd) == 0 else { throw SinkError(path: path, operation: "fsync", errno: errno) }
        } catch {
            // What a failed write or sync left may live in the page cache only: Linux reports a failed write-back
            // once and marks the pages clean, so the next run would find whole lines, count their records as
            // written, drop them as duplicates when the source sends them again, and lose them with the pages.
            // The file is cut back to where this append began, and the run fails.
            if ftruncate(fd, off_t(start)) == 0 { _ = fsync(fd) }
            throw error
        }
        // A folder's entries are synced when this append created them, and once in each process (see below).
        let synced = try syncFoldersOnceInProcess()
        if !existed, !synced { try syncFolder(directory) }
        if createdFolder, !synced { try syncFolder((directory as NSString).deletingLastPathComponent) }
        return (name, end)
    }

    /// Syncs the source's folder and the one above once in each process, before its files are first read or
    /// written to (`recover`, `append`): a crash between an earlier process creating a file (or the folder) and
    /// syncing its folder left the entry in the page cache only, and this process, finding the file there, never
    /// synced it, while the index it built from the file was durable. Says whether it synced them now.
    private func syncFoldersOnceInProcess() throws(SinkError) -> Bool {
        guard !Self.syncedFolders.withLock({ $0.contains(directory) }) else { return false }
        try syncFolder(directory)
        try syncFolder((directory as NSString).deletingLastPathComponent)
        _ = Self.syncedFolders.withLock { $0.insert(directory) }
        return true
    }

    /// Cuts a torn last line (no trailing newline) and returns the new end of the file.
    static func repairTail(fd: Int32, path: String) throws(SinkError) -> Int {
        // The file's size; every access below uses pread/pwrite with explicit offsets.
        let fileEnd = lseek(fd, 0, SEEK_END)
        guard fileEnd >= 0 else { throw SinkError(path: path, operation: "seek", errno: errno) }
        let size = Int(fileEnd)
        guard size > 0 else { return 0 }
        // Read backwards in chunks until the last newline is found.
        var end = size
        var chunkEnd = size
        var lastByteIsNewline = false
        var found = false
        var buffer = [UInt8](repeating: 0, count: 4096)
        while chunkEnd > 0, !found {
            let chunkStart = max(0, chunkEnd - buffer.count)
            let count = chunkEnd - chunkStart
            let read = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, count, off_t(chunkStart)) }
            guard read == count else { throw SinkError(path: path, operation: "read", errno: errno) }
            if chunkEnd == size { lastByteIsNewline = buffer[count - 1] == UInt8(ascii: "\n") }
            if lastByteIsNewline { return size }
            if let index = buffer[0..<count].lastIndex(of: UInt8(ascii: "\n")) {
                end = chunkStart + index + 1
                found = true
            }
            chunkEnd = chunkStart
        }
        if !found { end = 0 }
        guard ftruncate(fd, off_t(end)) == 0 else { throw SinkError(path: path, operation: "truncate", errno: errno) }
        guard fsync(fd) == 0 else { throw SinkError(path: path, operation: "fsync", errno: errno) }
        return end
    }

    /// Creates the source's folder; returns `true` when it had to.
    private func ensureDirectory() throws(SinkError) -> Bool {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue {
            return false
        }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw SinkError(path: directory, operation: "create folder", detail: error.localizedDescription)
        }
        return true
    }

    static func fsyncDirectory(_ path: String) throws(SinkError) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw SinkError(path: path, operation: "open folder", errno: errno) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw SinkError(path: path, operation: "fsync folder", errno: errno) }
    }

    /// The sink's own fields of one line; `nil` for a line that is not one of its records. The record itself is
    /// checked as the collectors check it, not read: `JSONSerialization` refused numbers beyond a `Double` (`1e400`,
    /// valid JSON that a collector accepts), so rebuilding the dedup index skipped such lines.
    static func decodeLine(_ line: Data) -> SinkEntry? {
        // The line holds the record one level down: a record nested as deep as the collectors accept is one
        // level deeper here, and refusing the line left its key out of a rebuilt index (written again later).
        guard let fields = try? JSONRecords.fields(line, wanted: ["id", "version", "mark"], maxDepth: 513),
            let id = fields.string("id"), let markText = fields.string("mark"),
            let mark = try? Timestamp(rfc3339: markText)
        else { return nil }
        return SinkEntry(id: id, version: fields.string("version") ?? markText, mark: mark)
    }

    /// A JSON string literal, escaped.
    static func jsonString(_ text: String) -> [UInt8] {
        var out: [UInt8] = []
        appendJSONString(text, to: &out)
        return out
    }

    /// Appends `text` as a JSON string literal; text with nothing to escape (ids, times) is copied as it is.
    static func appendJSONString(_ text: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        // The check walks the string's own UTF-8 buffer: through `text.utf8` it was 5 % of the writer's CPU.
        let plain =
            text.utf8.withContiguousStorageIfAvailable { bytes in
                !bytes.contains { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }
            } ?? !text.utf8.contains { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }
        if plain {
            out += text.utf8
            out.append(UInt8(ascii: "\""))
            return
        }
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += #"\""#.utf8
            case "\\": out += #"\\"#.utf8
            case "\n": out += #"\n"#.utf8
            case "\r": out += #"\r"#.utf8
            case "\t": out += #"\t"#.utf8
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += ("\\u" + String(repeating: "0", count: 4 - hex.count) + hex).utf8
            default: out += String(scalar).utf8
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

/// One line of the sink, as read back.
struct SinkEntry: Sendable, Equatable {
    var id: String
    var version: String
    var mark: Timestamp
    var key: RecordKey { RecordKey(id: id, version: version) }
}

/// A sink operation that failed; the run fails with this message and the watermark stays.
struct SinkError: Error, Sendable, CustomStringConvertible {
    var path: String
    var operation: String
    var detail: String

    init(path: String, operation: String, detail: String) {
        self.path = path
        self.operation = operation
        self.detail = detail
    }

    init(path: String, operation: String, errno code: Int32) {
        self.init(path: path, operation: operation, detail: String(cString: strerror(code)))
    }

    var description: String { "sink \(operation) failed for \(path): \(detail)" }
}
