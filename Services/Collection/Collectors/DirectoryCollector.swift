import Foundation
import StorageClient
import Synchronization
import WatermarkCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// A local drop folder of `.json` (object, array or STIX bundle) and `.ndjson` files; works offline.
///
/// The folder is an inbox: every file that is new or has changed since it was last collected is read once,
/// whatever the times of its records, so a file dropped late with old records is not lost. Files are known by
/// identity (name, size, modification time, a hash of the head) in a ledger under the local state, written
/// only once the file's last records are on disk (`pageCommitted`); the run's record-level dedup drops what a
/// grown file or a crash in the middle of a file sends again. Files are read in file-name order and streamed:
/// a page holds at most `pageSize` records, from as many files as it takes to fill it, and the cursor says where
/// in which file the next page starts, so a file of any size is never held in memory. Each record keeps the bytes it
/// has in the file. Hidden files (`.name`) are ignored, so a writer can create `.x.json` and rename it; a file cut
/// short (still being written in place) is left for the next run, and once it has not changed for `settleTime`
/// reported and skipped until it changes (never moved: its writer may hold it open). A file that is not valid
/// records is moved to `.rejected/` with a `.reason` file beside it once the records before its first bad one are on
/// disk (they stay collected), and the other files go on; so do they past an entry that cannot be read at all, and
/// the run then fails naming it.
struct DirectoryCollector: Collector {
    let settings: DirectorySettings
    let ledger: FileLedger
    /// The most records one page holds (the source's `page_size`).
    var pageSize = 100
    /// The folder's files as this run listed them.
    private let listing = FolderListing()
    /// Files this run could not read (a folder or a pipe under a file's name, a file it may not read): skipped, so
    /// that they do not keep the others from being collected, and then the run fails naming them.
    private let unreadable = UnreadableFiles()
    /// The cursor after the last page of a run that skipped files: fetching it fails the run.
    static let unreadableCursor = "\u{2}unreadable"

    func fetchPage(since: Timestamp, cursor: String?) async throws(CollectorError) -> CollectorPage {
        if cursor == Self.unreadableCursor { throw unreadable.failure(folder: settings.path) }
        if cursor == nil { unreadable.clear() }
        var page = CollectorPage(records: [])
        // The cursor is a place inside a file, or the name of the last file read (the next one sorts after it).
        var resume = cursor.flatMap(FilePosition.init(cursor:))
        var after = resume == nil ? cursor : nil
        // A page takes records from as many files as it needs to hold `pageSize`: a page per file cost a folder of
        // many small files the sink's fsync and the ledger's for every file (32,000 five-record files 13.7 s).
        if cursor == nil {
            page.highWaterMark = try ledger.newestMark()
            // The ledger forgets the files gone from the folder (an inbox is emptied: it grew without end, and each
            // run read it whole).
            ledger.forget(allBut: Set(try listing.names(after: nil, fresh: true, list: listFiles)))
        }
        var fresh = false
        while page.records.count < pageSize {
            let position: FilePosition
            if let place = resume {
                position = place
                resume = nil
            } else {
                guard let next = try nextFile(after: after, fresh: fresh, page: &page) else {
                    // The folder's files that could be read are collected: now the run fails for the others.
                    if !unreadable.isEmpty { page.next = Self.unreadableCursor }
                    return page
                }
                position = next
            }
            fresh = false
            let read = try await read(from: position, limit: pageSize - page.records.count)
            page.records += read.records
            page.progress += read.finished.map { [$0] } ?? []
            page.rejections += read.rejection.map { [$0] } ?? []
            page.warnings += read.warning.map { [$0] } ?? []
            if let rest = read.rest {
                page.next = rest.cursor
                return page
            }
            after = position.file
        }
        // Full at the end of a file: the next page starts after it, if any file follows.
        page.next = try after.flatMap { name throws(CollectorError) in
            try listing.names(after: name, fresh: false, list: listFiles).isEmpty ? nil : name
        }
        if page.next == nil, !unreadable.isEmpty { page.next = Self.unreadableCursor }
        return page
    }

    /// The first file after `after` that is not collected, at its start; `nil` when none is left. The folder is
    /// listed once a run (and again once that listing is used up, so that files dropped meanwhile are picked up in
    /// order): listing it for every file made a folder of many files quadratic.
    private func nextFile(
        after: String?, fresh: Bool, page: inout CollectorPage
    ) throws(CollectorError) -> FilePosition? {
        var after = after
        var fresh = fresh
        while true {
            let files = try listing.names(after: after, fresh: fresh, list: listFiles)
            guard !files.isEmpty else { return nil }
            for name in files {
                let path = (settings.path as NSString).appendingPathComponent(name)
                // A name that is not UTF-8 comes from the listing with U+FFFD where its bytes were, so no file
                // has it: it was skipped as gone, for ever.
                if name.unicodeScalars.contains("\u{FFFD}") {
                    page.warnings.append(unreadable.note(name, .file(path: path, detail: Self.notUTF8)))
                    continue
                }
                // Known by its identity (a stat and its first 4 KiB): an unchanged file is not read again.
                let identity: FileIdentity?
                do {
                    identity = try Self.identity(of: path, name: name)
                } catch {
                    page.warnings.append(unreadable.note(name, error))
                    continue
                }
                guard let identity else {
                    // Gone meanwhile, or a link to nothing (which, skipped as gone, went unnoticed).
                    if (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) != nil {
                        page.warnings.append(unreadable.note(name, .file(path: path, detail: Self.danglingLink)))
                    }
                    continue
                }
                if try ledger.file(name) != identity {
                    return FilePosition(file: name, identity: identity)
                }
            }
            // Every listed file is collected (or gone): list again for files dropped meanwhile.
            (after, fresh) = (files.last, false)
        }
    }

    func pageCommitted(_ page: CollectorPage) throws(CollectorError) -> [RejectedFile] {
        try ledger.record(page.progress)
        var moved: [RejectedFile] = []
        for rejection in page.rejections {
            let path = (settings.path as NSString).appendingPathComponent(rejection.identity.name)
            // A file changed since it was read (fixed, grown, replaced) is not the file found bad: the next run reads it.
            guard try Self.identity(of: path, name: rejection.identity.name) == rejection.identity else { continue }
            if let rejected = try reject(rejection) { moved.append(rejected) }
        }
        return moved
    }

    func listFiles() throws(CollectorError) -> [String] {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: settings.path)
        } catch {
            throw .file(path: settings.path, detail: "the drop folder cannot be listed (\(error.localizedDescription))")
        }
        return names.filter { name in
            !name.hasPrefix(".") && (name.hasSuffix(".json") || name.hasSuffix(".ndjson"))
        }.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
    }

    /// What reading one file for a page gave.
    private struct FileRead {
        var records: [CollectedRecord] = []
        /// The file, read to its end: the ledger records it once the page is on disk.
        var finished: FileIdentity?
        var rejection: FileRejection?
        var warning: String?
        /// Where the file goes on: the page is full.
        var rest: FilePosition?
    }

    /// At most `limit` records of one file from `start`, and what became of the file.
    private func read(from start: FilePosition, limit: Int) async throws(CollectorError) -> FileRead {
        let name = start.file
        let path = (settings.path as NSString).appendingPathComponent(name)
        var position = start
        var read = FileRead()
        do {
            guard let file = try DropFile(path: path) else { return read }  // moved away meanwhile
            if position.offset > 0,
                position.inode != file.inode || file.size < position.offset
                    || file.headHash(bytes: position.identity.size) != position.identity.headHash
            {
                // Renamed over, cut or rewritten since the page before: the new file is read from its start (what
                // the old one gave is collected; the run's dedup drops what the new one repeats). A file renamed over
                // can have the old one's inode (a number freed is used again), so its head tells it too: the bytes
                // the old one had then, which a file only grown since keeps. Its identity is the open file's: taken
                // from the path, it could be a third file's, renamed over meanwhile, which would then be recorded as
                // collected unread.
                position = FilePosition(file: name, identity: try file.identity())
            }
            position.inode = file.inode
            let chunk = try file.next(&position, limit: limit, lines: name.hasSuffix(".ndjson"))
            // The records before the first bad one are collected; the file is moved aside from there.
            let (records, bad) = try await goodRecords(chunk, name: name)
            read.records = records
            let now = Timestamp.now()
            let newest = read.records.lazy.map(\.mark).filter { $0 <= now }.max()
            position.identity.newestMark = [position.identity.newestMark, newest].compactMap { $0 }.max()
            if let bad {  // a record before where the chunk's reading failed, if it did
                read.rejection = FileRejection(identity: position.identity, reason: bad)
            } else if let failure = chunk.failure {
                failed(failure, &read)
            } else if chunk.incompleteTail, Self.changedWithin(Self.settleTime, path: path) {
                // Not recorded as collected: the next run reads the file again, its end whole by then.
                read.warning =
                    "\(name) line \(position.lines + 1) has no line break and is not a JSON record yet (still being "
                    + "written?): it is read again once the file changes"
            } else if chunk.incompleteTail {
                // Left so for longer than a writer pauses (one that died mid-line): a bad last line, not one being
                // written; read again at every run, the file was never done with.
                read.rejection = FileRejection(
                    identity: position.identity,
                    reason:
                        "\(name) line \(position.lines + 1) has no line break and is not a JSON record, and the file "
                        + "has not changed for \(Self.settleTime.components.seconds) s",
                    cutShort: true)
            } else if chunk.finished {
                read.finished = position.identity
            } else {
                read.rest = position
            }
        } catch let failure as DropFile.Failure {
            failed(failure, &read)
        } catch let error as CollectorError {
            throw error
        } catch {
            throw .file(path: path, detail: "\(error)")
        }
        return read

        /// What becomes of a file found bad or cut short.
        func failed(_ failure: DropFile.Failure, _ read: inout FileRead) {
            switch failure {
            case .io(let detail):
                read.records = []
                read.warning = unreadable.note(name, .file(path: path, detail: detail))
            case .truncated where Self.changedWithin(Self.settleTime, path: path):
                // Not recorded as collected: the next run reads it again, whole by then.
                read.warning =
                    "\(name) \(failure) and changed within the last \(Self.settleTime.components.seconds) s (still "
                    + "being written?): it is read again on the next run"
            case .truncated:
                read.rejection = FileRejection(
                    identity: position.identity, reason: "\(name) is not valid JSON records: \(failure)",
                    cutShort: true)
            default:
                read.rejection = FileRejection(
                    identity: position.identity, reason: "\(name) is not valid JSON records: \(failure)")
            }
        }
    }

    /// The records of `chunk`, and when one of them is not what the folder promises, those before it and why.
    private func goodRecords(
        _ chunk: DropFile.Chunk, name: String
    ) async throws(CollectorError) -> ([CollectedRecord], bad: String?) {
        do {
            return (try await records(chunk, name: name), nil)
        } catch {
            guard case .malformed(let detail) = error else { throw error }
            // Only on this path: the records one by one, up to the first bad one, which the reason names (the
            // chunk's check may have named a later one that fails another check).
            var good: [CollectedRecord] = []
            for index in chunk.records.indices {
                var one = chunk
                (one.records, one.places) = ([chunk.records[index]], [chunk.places[index]])
                do {
                    good += try await records(one, name: name)
                } catch {
                    guard case .malformed(let first) = error else { throw error }
                    return (good, first)
                }
            }
            return (good, detail)
        }
    }

    /// The records of one chunk of a file; a record that is not what the folder promises throws `.malformed`.
    private func records(_ chunk: DropFile.Chunk, name: String) async throws(CollectorError) -> [CollectedRecord] {
        let wanted = [settings.idField, settings.timestampField] + (settings.fallbackTimestampField.map { [$0] } ?? [])
        let (places, unit) = (chunk.places, chunk.unit)
        let label = { @Sendable (index: Int) in "\(name) \(unit) \(places[index])" }
        let fields = try await JSONRecords.fields(of: chunk.records, wanted: wanted, label: label)
        var records: [CollectedRecord] = []
        records.reserveCapacity(fields.count)
        for (index, object) in fields.enumerated() {
            guard let id = object.text(settings.idField), !id.isEmpty else {
                throw .malformed("\(label(index)) has no \"\(settings.idField)\"")
            }
            var field = settings.timestampField
            if !object.has(field), let fallback = settings.fallbackTimestampField { field = fallback }
            guard let text = object.string(field) else {
                throw .malformed("\(label(index)) (\(id)) has no \"\(settings.timestampField)\" timestamp")
            }
            records.append(
                try CollectedRecord(
                    id: id, stamp: text, json: JSONRecords.oneLine(chunk.records[index]),
                    field: "\(label(index)) (\(id)) field \"\(field)\""))
        }
        return records
    }

    /// Moves the file to `.rejected/` beside it and writes `<name>.reason` there. A file of that name rejected before
    /// stays: this one becomes `<stem>.2.<extension>` (or the next number free), for a rejected file may be the only
    /// copy of records not yet collected.
    ///
    /// A folder that cannot be written (a read-only mount, as the compose file's demo folder) failed every later run on
    /// the same file, and each run collected one page more at most: the file is then left in place, recorded in the
    /// ledger as read so that it is skipped until it changes, and reported so. A failure that passes (a full disk, no
    /// file descriptor left: `isTransient`) fails the run as before, and the next run tries again; a reason written for
    /// a move that failed is removed either way (two sources reading one folder could race for one name: not guarded).
    ///
    /// A file cut short (`cutShort`) is not moved either: a writer that keeps it open (block-buffered output that
    /// ends mid-line for over a minute, a copy over a slow mount) went on writing into `.rejected/`, where nothing is
    /// collected. It is left in place, skipped while unchanged and read again once it changes.
    ///
    /// The file moved is checked to be the one found bad: one renamed over it between the check and the move (the
    /// reason's writes and syncs take milliseconds) was moved unread, with the old one's reason. Such a file is put
    /// back, never over a file dropped there since, and this returns `nil`: the next run reads it.
    func reject(_ rejection: FileRejection) throws(CollectorError) -> RejectedFile? {
        let (name, reason) = (rejection.identity.name, rejection.reason)
        if rejection.cutShort {
            try ledger.record([rejection.identity])
            return RejectedFile(
                name: name, movedTo: nil, reason: reason,
                leftInPlace:
                    "cut short: left in place (a writer may still hold it open), read again once it changes")
        }
        let folder = (settings.path as NSString).appendingPathComponent(".rejected")
        let source = (settings.path as NSString).appendingPathComponent(name)
        let manager = FileManager.default
        var target = (folder as NSString).appendingPathComponent(name)
        var copy = 1
        while manager.fileExists(atPath: target) || manager.fileExists(atPath: target + ".reason") {
            copy += 1
            let (stem, suffix) = ((name as NSString).deletingPathExtension, (name as NSString).pathExtension)
            target = (folder as NSString).appendingPathComponent("\(stem).\(copy).\(suffix)")
        }
        do {
            try manager.createDirectory(atPath: folder, withIntermediateDirectories: true)
            try DurableFile.write(Data("\(Timestamp.now()) \(reason)\n".utf8), to: target + ".reason")
            try manager.moveItem(atPath: source, toPath: target)
            // (A link is left as moved: its target, relative to the folder, may not be found from `.rejected/`.)
            var status = stat()
            let isLink = lstat(target, &status) == 0 && status.st_mode & S_IFMT == S_IFLNK
            if !isLink, (try? Self.identity(of: target, name: name)) != rejection.identity {
                if link(target, source) == 0 { unlink(target) }
                try? manager.removeItem(atPath: target + ".reason")
                return nil
            }
        } catch {
            try? manager.removeItem(atPath: target + ".reason")
            if Self.isTransient(error) {
                throw .file(path: source, detail: "cannot move the unreadable file to \(folder): \(error)")
            }
            try ledger.record([rejection.identity])
            return RejectedFile(
                name: name, movedTo: nil, reason: reason,
                leftInPlace: "cannot move it to \(folder) (\(error)): left in place, skipped until it changes")
        }
        return RejectedFile(name: name, movedTo: target, reason: reason)
    }

    /// Whether a file operation's failure may pass by itself (the errno under Foundation's error or `DurableFile`'s).
    static func isTransient(_ error: any Error) -> Bool {
        let code: Int32?
        if let error = error as? DurableFile.IOError {
            code = error.code
        } else if let error = error as? POSIXError {
            code = error.code.rawValue
        } else {
            let bridged = error as NSError
            if bridged.domain == NSPOSIXErrorDomain {
                code = Int32(bridged.code)
            } else if let underlying = bridged.userInfo[NSUnderlyingErrorKey] as? any Error {
                return isTransient(underlying)
            } else {
                code = nil
            }
        }
        // Not EBUSY (a file that is a mount point, every time) nor EIO (a failing disk).
        return code.map { [ENOSPC, EDQUOT, EMFILE, ENFILE, EINTR, EAGAIN, ENOMEM].contains($0) } ?? false
    }

    /// How long after its last change a file that ends before its JSON does is taken for one still being written
    /// (left for the next run) rather than a bad file (moved to `.rejected/`): a `.json` file copied into the folder
    /// in place, rather than written under a hidden name and renamed, was rejected when a run caught it half written,
    /// and what the writer wrote after that went to `.rejected/` too.
    static let settleTime = Duration.seconds(60)

    /// The file at `path` was modified less than `interval` ago (or its time is in the future).
    static func changedWithin(_ interval: Duration, path: String) -> Bool {
        guard let status = FileStatus(path: path) else { return false }
        let now = Int64(Date().timeIntervalSince1970 * 1e9)
        return now - status.modifiedNanoseconds < Int64(interval.components.seconds) * 1_000_000_000
    }

    static let notAFile = "not a plain file (a folder, a pipe or a device)"
    static let notUTF8 = "its name is not UTF-8 (rename it)"
    static let danglingLink = "a symbolic link to a file that does not exist"
    static let linkOutside =
        "a symbolic link to a file outside the drop folder (not read: whoever may write the folder could have the "
        + "service read, and quote, any file it may read)"

    /// Opens `path` to read it, non-blocking (opening a pipe under a file's name would wait for a writer). A name
    /// that is no link is opened as is (`O_NOFOLLOW`, in the same call); a link is followed, and what it opened is
    /// then checked to lie in the folder holding the link (`/proc/self/fd`: the file open, not the path again, so a
    /// link swapped between a check and the open cannot take the service out of the folder). Returns the descriptor,
    /// or -1 with `errno` set, or `linkOutsideFolder`.
    static func openInFolder(_ path: String) -> Int32 {
        let flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK
        let direct = open(path, flags | O_NOFOLLOW)
        guard direct < 0, errno == ELOOP else { return direct }
        let followed = open(path, flags)
        guard followed >= 0 else { return followed }
        // Compared as bytes: as strings, two names that differ only in how an accent is written were one.
        let opened = openedPath(followed) ?? resolvedPath(path)
        guard let folder = resolvedPath((path as NSString).deletingLastPathComponent),
            let opened, opened.starts(with: folder + [UInt8(ascii: "/")])
        else {
            close(followed)
            return linkOutsideFolder
        }
        return followed
    }

    /// `path` with its links and `..` resolved (`realpath`), as bytes.
    private static func resolvedPath(_ path: String) -> [UInt8]? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return Array(UnsafeBufferPointer(start: resolved, count: strlen(resolved))).map { UInt8(bitPattern: $0) }
    }

    static let linkOutsideFolder: Int32 = -2

    /// The path of the file open on `descriptor`, as the kernel has it (`nil` where `/proc` cannot tell: the link's
    /// path is then resolved instead, which a link swapped meanwhile could fool).
    private static func openedPath(_ descriptor: Int32) -> [UInt8]? {
        #if os(Linux)
            var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
            let length = buffer.withUnsafeMutableBufferPointer { bytes in
                bytes.withMemoryRebound(to: CChar.self) {
                    readlink("/proc/self/fd/\(descriptor)", $0.baseAddress!, $0.count - 1)
                }
            }
            guard length > 0 else { return nil }
            return Array(buffer[..<length])
        #else
            return nil
        #endif
    }

    /// The file's identity, `nil` when it is gone. If it grows after this, the ledger keeps the smaller size
    /// and the next run reads it again (its records already written are dropped by dedup).
    static func identity(of path: String, name: String) throws(CollectorError) -> FileIdentity? {
        let descriptor = openInFolder(path)
        guard descriptor >= 0 else {
            if descriptor == linkOutsideFolder { throw .file(path: path, detail: linkOutside) }
            if errno == ENOENT { return nil }
            throw .file(path: path, detail: String(cString: strerror(errno)))
        }
        defer { close(descriptor) }
        guard let status = FileStatus(descriptor: descriptor) else {
            throw .file(path: path, detail: String(cString: strerror(errno)))
        }
        guard status.isRegularFile else { throw .file(path: path, detail: notAFile) }
        guard let headHash = FileIdentity.headHash(of: descriptor) else {
            throw .file(path: path, detail: String(cString: strerror(errno)))
        }
        return FileIdentity(
            name: name, size: status.size, modifiedNanoseconds: status.modifiedNanoseconds, headHash: headHash)
    }
}

/// The files of a drop folder one run could not read, and why.
final class UnreadableFiles: Sendable {
    private let files = Mutex<[(name: String, error: CollectorError)]>([])

    var isEmpty: Bool { files.withLock { $0.isEmpty } }

    func clear() { files.withLock { $0.removeAll() } }

    /// Notes `name` and returns the page's warning.
    func note(_ name: String, _ error: CollectorError) -> String {
        files.withLock { $0.append((name, error)) }
        return "\(error): skipped; the run fails once the folder's other files are collected"
    }

    /// The run's error: the first file's, naming a few of the others.
    func failure(folder: String) -> CollectorError {
        files.withLock { files in
            let others = files.dropFirst().prefix(5).map(\.name).joined(separator: ", ")
            let more = files.count > 6 ? " and \(files.count - 6) more" : ""
            let rest =
                (others.isEmpty ? "" : "; nor could \(others)\(more)") + " (the folder's other files were collected)"
            switch files.first?.error {
            case .file(let path, let detail)?: return .file(path: path, detail: detail + rest)
            case let error?: return .file(path: folder, detail: "\(error)" + rest)
            case nil: return .file(path: folder, detail: "a file could not be read")
            }
        }
    }
}

/// The names of a drop folder's files, sorted, as last listed.
final class FolderListing: Sendable {
    /// The last listing, and whether it was listed again since the fresh one.
    private let state = Mutex<(names: [String]?, relisted: Bool)>((nil, false))

    /// The names sorting after `name` (all of them when it is nil), from the last listing unless `fresh`; when that
    /// has none after `name`, the folder is listed again, once (a run would otherwise go on for as long as files
    /// kept arriving with later names; those wait for the next run).
    func names(
        after name: String?, fresh: Bool, list: () throws(CollectorError) -> [String]
    ) throws(CollectorError) -> ArraySlice<String> {
        try state.withLock { state throws(CollectorError) in
            if fresh || state.names == nil { state = (try list(), false) }
            var after = Self.suffix(of: state.names!, after: name)
            if after.isEmpty, !fresh, !state.relisted {
                state = (try list(), true)
                after = Self.suffix(of: state.names!, after: name)
            }
            return after
        }
    }

    private static func suffix(of names: [String], after name: String?) -> ArraySlice<String> {
        guard let name else { return names[...] }
        // Binary search: the names are sorted by their UTF-8 bytes.
        var (low, high) = (names.startIndex, names.endIndex)
        while low < high {
            let middle = (low + high) / 2
            if name.utf8.lexicographicallyPrecedes(names[middle].utf8) { high = middle } else { low = middle + 1 }
        }
        return names[low...]
    }
}

/// What the drop folder's ledger knows of a collected file: the same name, size, modification time and head
/// means the same file.
struct FileIdentity: Sendable, Equatable, Codable {
    var name: String
    var size: Int
    var modifiedNanoseconds: Int64
    /// FNV-1a (64 bits) of the first 4 KiB, in hex: a file replaced by another of the same size and time differs.
    var headHash: String
    /// The newest record mark of the file that was not in the future when it was collected (not part of the
    /// identity).
    var newestMark: Timestamp?

    enum CodingKeys: String, CodingKey {
        case name, size
        case modifiedNanoseconds = "modified_ns"
        case headHash = "head_hash"
        case newestMark = "newest_mark"
    }

    static func == (lhs: FileIdentity, rhs: FileIdentity) -> Bool {
        lhs.name == rhs.name && lhs.size == rhs.size && lhs.modifiedNanoseconds == rhs.modifiedNanoseconds
            && lhs.headHash == rhs.headHash
    }

    static let headSize = 4096

    init(name: String, size: Int, modifiedNanoseconds: Int64, head: Data) {
        self.init(
            name: name, size: size, modifiedNanoseconds: modifiedNanoseconds,
            headHash: head.prefix(Self.headSize).withUnsafeBytes { Self.hash($0) })
    }

    init(name: String, size: Int, modifiedNanoseconds: Int64, headHash: String) {
        self.name = name
        self.size = size
        self.modifiedNanoseconds = modifiedNanoseconds
        self.headHash = headHash
    }

    /// The hash of the first `headSize` bytes of the open file `descriptor`; `nil` (and `errno`) if they cannot be
    /// read. With `pread`, hashed in place: `FileHandle` and `Data`'s iterator were a fifth of the CPU of a folder of
    /// small files.
    static func headHash(of descriptor: Int32, bytes: Int = headSize) -> String? {
        withUnsafeTemporaryAllocation(byteCount: min(bytes, headSize), alignment: 8) { buffer in
            var count = 0
            while count < buffer.count {
                let read = pread(descriptor, buffer.baseAddress! + count, buffer.count - count, off_t(count))
                if read < 0, errno == EINTR { continue }
                guard read >= 0 else { return nil }
                if read == 0 { break }
                count += read
            }
            return hash(UnsafeRawBufferPointer(rebasing: buffer[..<count]))
        }
    }

    /// FNV-1a (64 bits) of `bytes`, in hex.
    static func hash(_ bytes: UnsafeRawBufferPointer) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        return String(hash, radix: 16)
    }
}

/// The files a drop-folder source has collected, in `DATA_DIR/.state/files/<source_id>.json` (the whole ledger,
/// written durably: a crash leaves the old file or the new, never a torn one) and `<source_id>.journal` beside it
/// (the files recorded since, one JSON line each, appended and synced). Recording a file appends its line, so a
/// folder of many files costs a line each: rewriting the whole ledger for every file, as it first did, took 8,000
/// small files 277 s (the ledger's decoding and encoding 68 % of the CPU). The ledger is read once per instance (a
/// collector's run) and kept; the journal is folded into the whole file when the ledger is read, so once a run
/// (folding it whenever it was as long as the whole file cost a run of 20,000 small files 10 % of its CPU in
/// encoding the ledger again). A line cut short by a crash is ignored: the file it named is read again and the
/// run's dedup drops its records.
final class FileLedger: Sendable {
    let path: String
    let journalPath: String

    private struct State {
        var files: [String: FileIdentity]?
        /// A write failed part-way (the journal may end in a cut line), or folding failed: the next record rewrites
        /// the whole ledger rather than append.
        var journalSuspect = false
    }

    /// The ledger in memory, held only to read or change it: never across a write, so that a run fetching its next
    /// page looks files up while the page before is being recorded (held through the sync, it kept that fetch, and
    /// the concurrency pool's thread it ran on, waiting for the disk).
    private let state = Mutex(State())
    /// Serialises the journal's appends and folds.
    private let writing = Mutex(())

    init(stateDirectory: String, sourceID: SourceID) {
        path = (stateDirectory as NSString).appendingPathComponent("files/\(sourceID.rawValue).json")
        journalPath = (stateDirectory as NSString).appendingPathComponent("files/\(sourceID.rawValue).journal")
    }

    func load() throws(CollectorError) -> [String: FileIdentity] {
        try ensureLoaded()
        return state.withLock { $0.files ?? [:] }
    }

    /// What the ledger knows of the file `name`. A lookup under the lock: a run holding a copy of the ledger made
    /// each page's `record` copy it whole again.
    func file(_ name: String) throws(CollectorError) -> FileIdentity? {
        try ensureLoaded()
        return state.withLock { $0.files?[name] }
    }

    /// The newest record mark of the files collected: the watermark reaches it even when the run that collected
    /// the file died before it could move the mark.
    func newestMark() throws(CollectorError) -> Timestamp? {
        try ensureLoaded()
        return state.withLock { $0.files?.values.compactMap(\.newestMark).max() }
    }

    /// Forgets the files not in `names` (gone from the folder); the whole ledger is written again when any was
    /// known (or by the next record, if that write fails: the files forgotten then come back at the next read, which
    /// costs nothing but the time to look them up).
    func forget(allBut names: Set<String>) {
        guard (try? ensureLoaded()) != nil else { return }
        writing.withLock { _ in
            let forgotten = state.withLock { state in
                let before = state.files?.count ?? 0
                state.files = state.files?.filter { names.contains($0.key) }
                return before - (state.files?.count ?? 0)
            }
            if forgotten > 0 { try? fold() }
        }
    }

    /// Records `identities` (the files a page finished) with one append and one sync.
    func record(_ identities: [FileIdentity]) throws(CollectorError) {
        guard !identities.isEmpty else { return }
        try ensureLoaded()
        try writing.withLock { _ throws(CollectorError) in
            let suspect = state.withLock { state in
                // In place: a copy of the ledger per page is quadratic again.
                for identity in identities { state.files![identity.name] = identity }
                return state.journalSuspect
            }
            if suspect {
                try fold()
                return
            }
            do {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                var lines = Data()
                for identity in identities { lines += try encoder.encode(identity) + Data("\n".utf8) }
                try DurableFile.appendLines(lines, to: journalPath)
            } catch {
                state.withLock { $0.journalSuspect = true }
                throw .file(path: journalPath, detail: "the drop folder's ledger cannot be written (\(error))")
            }
        }
    }

    /// Reads the ledger from disk the first time (the whole file, then the journal's lines over it, folded; a fold
    /// that fails is left to the next record, so that a run with nothing to record still runs on a full disk).
    private func ensureLoaded() throws(CollectorError) {
        // Loaded already: no wait for a write under way.
        if state.withLock({ $0.files != nil }) { return }
        try writing.withLock { _ throws(CollectorError) in
            if state.withLock({ $0.files != nil }) { return }
            var files: [String: FileIdentity]
            var lines = 0
            var damaged = 0
            do {
                let decoder = JSONDecoder()
                let whole = try DurableFile.read(path).map { try decoder.decode([FileIdentity].self, from: $0) } ?? []
                files = Dictionary(whole.map { ($0.name, $0) }, uniquingKeysWith: { $1 })
                // Complete lines only: what follows the last line break is an append a crash cut short.
                if let journal = try DurableFile.journalLines(journalPath) {
                    for line in journal.lines {
                        lines += 1
                        // A line that is not an identity (damaged on disk) forgets one file, which is read again
                        // (its records dropped by the run's dedup): failing on it stopped the source for good.
                        guard let identity = try? decoder.decode(FileIdentity.self, from: line) else {
                            damaged += 1
                            continue
                        }
                        files[identity.name] = identity
                    }
                    lines += journal.cut ? 1 : 0
                }
            } catch {
                throw .file(path: path, detail: "the drop folder's ledger cannot be read (\(error))")
            }
            state.withLock { $0.files = files }
            // The damaged journal is kept for inspection, once the whole ledger holds its other lines.
            if lines > 0 {
                try? fold(keepingJournalAs: damaged > 0 ? journalPath + ".damaged-\(Timestamp.now())" : nil)
            }
        }
    }

    /// Writes the whole ledger, then empties the journal, or moves it to `keepingJournalAs` (a crash between the two
    /// replays lines already in it). The caller holds `writing`.
    private func fold(keepingJournalAs kept: String? = nil) throws(CollectorError) {
        let files = state.withLock { $0.files ?? [:] }
        do {
            try FileManager.default.createDirectory(
                atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            try DurableFile.write(try encoder.encode(files.values.sorted { $0.name < $1.name }), to: path)
            if let kept { try DurableFile.moveAside(journalPath, to: kept) }
            try DurableFile.write(Data(), to: journalPath)
        } catch {
            state.withLock { $0.journalSuspect = true }
            throw .file(path: path, detail: "the drop folder's ledger cannot be written (\(error))")
        }
        state.withLock { $0.journalSuspect = false }
    }
}
