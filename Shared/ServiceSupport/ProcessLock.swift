import WatermarkCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// An exclusive lock on the file at `path`, held for the life of the process: one storage service per SQLite
/// database (`<database>.lock`), one collection service per `DATA_DIR` (`.state/lock`).
///
/// SQLite would let a second storage service open the same file and interleave its writes with ours (two
/// services each believing they own the watermarks is how fencing and idempotency break); two collection
/// services on one data directory appended to the same sink files and each rewrote `pending.json` from its own
/// copy, dropping the other's queued updates. The second process is refused at start instead. The kernel drops
/// the lock when the process dies, even by SIGKILL, so a crash never leaves a stale lock behind.
public final class ProcessLock: Sendable {
    public let path: String
    private let descriptor: Int32

    /// Takes the lock; `inUse` says what to do when another process holds it (given that process's pid if known).
    public init(path: String, inUse: (_ holder: String?) -> String) throws(LockError) {
        self.path = path
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw LockError(description: "cannot open lock file \(path): \(String(cString: strerror(errno)))")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let holder = Self.readPID(fd)
            close(fd)
            throw LockError(description: inUse(holder))
        }
        let pid = "\(getpid())\n"
        _ = ftruncate(fd, 0)
        _ = pid.withCString { pwrite(fd, $0, strlen($0), 0) }
        descriptor = fd
    }

    deinit {
        flock(descriptor, LOCK_UN)
        close(descriptor)
    }

    private static func readPID(_ fd: Int32) -> String? {
        var buffer = [UInt8](repeating: 0, count: 32)
        let count = pread(fd, &buffer, buffer.count, 0)
        guard count > 0 else { return nil }
        let text = String(decoding: buffer.prefix(count), as: UTF8.self).trimmingWhitespace()
        return text.isEmpty ? nil : text
    }

    public struct LockError: Error, CustomStringConvertible {
        public let description: String
    }
}
