import Foundation

/// Holds `DATA_DIR` for this process: one collection service per data directory. Two (a `--once` started beside
/// the running service, a second replica on the same volume) appended to the same sink files, each cutting
/// what it took for the other's torn line, and each rewrote `pending.json` from its own copy, dropping the
/// other's queued watermark updates.
///
/// An exclusive `flock` on `DATA_DIR/.state/lock`, held until `release()` or the process ends (the kernel drops
/// it with the descriptor, also on SIGKILL, so a crash never leaves the directory locked).
final class DataDirectoryLock: Sendable {
    let path: String
    private let descriptor: Int32

    struct InUse: Error, CustomStringConvertible {
        var directory: String
        var holder: String
        var description: String {
            "DATA_DIR \(directory) is in use by another collection-service\(holder.isEmpty ? "" : " (pid \(holder))")"
        }
    }

    struct Failure: Error, CustomStringConvertible {
        var path: String
        var operation: String
        var detail: String
        var description: String { "cannot \(operation) \(path): \(detail)" }

        init(path: String, operation: String, detail: String) {
            (self.path, self.operation, self.detail) = (path, operation, detail)
        }

        init(path: String, operation: String, errno code: Int32) {
            self.init(path: path, operation: operation, detail: String(cString: strerror(code)))
        }
    }

    init(dataDirectory: String) throws {
        let state = (dataDirectory as NSString).appendingPathComponent(".state")
        do {
            try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        } catch {
            throw Failure(path: state, operation: "create", detail: error.localizedDescription)
        }
        path = (state as NSString).appendingPathComponent("lock")
        descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw Failure(path: path, operation: "open", errno: errno) }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            let code = errno
            let holder = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(
                in: .whitespacesAndNewlines)
            close(descriptor)
            if code == EWOULDBLOCK { throw InUse(directory: dataDirectory, holder: holder ?? "") }
            throw Failure(path: path, operation: "lock", errno: code)
        }
        // Who holds it, for the message a second process prints.
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(descriptor, 0)
        _ = pid.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }
    }

    /// Lets the directory go (closing the descriptor drops the lock).
    func release() {
        close(descriptor)
    }
}
