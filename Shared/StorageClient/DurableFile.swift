import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Whole-file writes that survive a crash at any instant: the new content goes to a temporary file that
/// is flushed to disk, renamed over the old one, and the folder is flushed too, so a reader finds either
/// the old content or the new, never a torn mix, and a write that returned is on disk.
public enum DurableFile {
    public struct IOError: Error, CustomStringConvertible {
        let operation: String
        let path: String
        /// The `errno` of the failure.
        public let code: Int32

        public var description: String { "\(operation) \(path): \(String(cString: strerror(code)))" }
    }

    /// The file's content, or `nil` when it does not exist.
    public static func read(_ path: String) throws -> Data? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        return try Data(contentsOf: URL(fileURLWithPath: path))
    }

    public static func write(_ data: Data, to path: String) throws {
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw IOError(operation: "open", path: temporary, code: errno) }
        do {
            try writeAll(data, to: fd, path: temporary)
            guard fsync(fd) == 0 else { throw IOError(operation: "fsync", path: temporary, code: errno) }
        } catch {
            close(fd)
            unlink(temporary)
            throw error
        }
        close(fd)
        guard rename(temporary, path) == 0 else {
            let code = errno
            unlink(temporary)
            throw IOError(operation: "rename", path: path, code: code)
        }
        try syncDirectory(of: path)
    }

    /// The complete lines of the journal at `path` (an append-only file of lines, each appended by `appendLines`),
    /// and whether a line cut short by a crash ends it; `nil` when there is no journal. A cut line is left out: the
    /// append that wrote it never returned. A writer must not append after a cut line (the two would read as one
    /// damaged line): it rewrites the journal first.
    public static func journalLines(_ path: String) throws -> (lines: [Data], cut: Bool)? {
        guard let journal = try read(path) else { return nil }
        let newline = UInt8(ascii: "\n")
        let end = journal.lastIndex(of: newline).map { $0 + 1 } ?? journal.startIndex
        let lines = journal[journal.startIndex..<end].split(separator: newline).map { Data($0) }
        return (lines, end < journal.endIndex)
    }

    /// Appends `lines` (each ending in a line break) to the journal at `path`, creating it and its folder if needed,
    /// and syncs it (its folder too, when the journal is new). A write or sync that fails, the folder's included,
    /// cuts the journal back to where it ended (EIO: Linux reports a failed write-back once and marks the pages
    /// clean, so lines the caller was told failed could otherwise be read back later) before the error is thrown.
    public static func appendLines(_ lines: Data, to path: String) throws {
        let existed = FileManager.default.fileExists(atPath: path)
        if !existed {
            try FileManager.default.createDirectory(
                atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        }
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw IOError(operation: "open", path: path, code: errno) }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw IOError(operation: "fstat", path: path, code: errno) }
        do {
            try writeAll(lines, to: fd, path: path)
            guard fsync(fd) == 0 else { throw IOError(operation: "fsync", path: path, code: errno) }
            if !existed { try syncDirectory(of: path) }
        } catch {
            if ftruncate(fd, status.st_size) == 0 { _ = fsync(fd) }
            throw error
        }
    }

    private static func writeAll(_ data: Data, to fd: Int32, path: String) throws {
        try data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            var offset = 0
            while offset < raw.count {
                let written = posixWrite(fd, raw.baseAddress! + offset, raw.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    throw IOError(operation: "write", path: path, code: errno)
                }
                offset += written
            }
        }
    }

    /// Moves a file aside (e.g. a corrupt one, kept for inspection), replacing an earlier copy.
    public static func moveAside(_ path: String, to destination: String) throws {
        guard rename(path, destination) == 0 else { throw IOError(operation: "rename", path: path, code: errno) }
        try syncDirectory(of: path)
    }

    private static func syncDirectory(of path: String) throws {
        let directory = (path as NSString).deletingLastPathComponent
        let fd = open(directory.isEmpty ? "." : directory, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw IOError(operation: "open", path: directory, code: errno) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw IOError(operation: "fsync", path: directory, code: errno) }
    }
}

#if canImport(Glibc) || canImport(Musl)
    private func posixWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int {
        write(fd, buffer, count)
    }
#else
    private func posixWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int {
        Darwin.write(fd, buffer, count)
    }
#endif
