import WatermarkCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// An exclusive lock on `<database>.lock`, held for the life of the process.
///
/// SQLite would let a second service open the same file and interleave its writes with ours; two
/// services each believing they own the watermarks is how fencing and idempotency break. The second
/// process is refused at start instead. The kernel drops the lock when the process dies, even by
/// SIGKILL, so a crash never leaves a stale lock behind.
final class DatabaseLock: Sendable {
    let path: String
    private let descriptor: Int32

    init(databasePath: String) throws(LockError) {
        path = databasePath + ".lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw LockError(description: "cannot open lock file \(path): \(String(cString: strerror(errno)))")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let holder = Self.readPID(fd)
            close(fd)
            throw LockError(
                description: "database \(databasePath) is in use by another storage-service process"
                    + (holder.map { " (pid \($0))" } ?? "") + "; stop it or use another DATABASE_PATH"
            )
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

    struct LockError: Error, CustomStringConvertible {
        let description: String
    }
}
