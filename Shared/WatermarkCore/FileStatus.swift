import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// What the services read of a file's status (`stat`). Read here, in a module that never loads swift-nio: where
/// NIO's C shims are loaded too, `struct stat` can be taken as theirs and its members refused for want of importing
/// them (`MemberImportVisibility`), depending on which files the compiler happens to batch together (a fresh build
/// of the collection service failed that way).
public struct FileStatus: Sendable, Equatable {
    public var inode: UInt64
    public var size: Int
    /// The last modification, in nanoseconds since 1970.
    public var modifiedNanoseconds: Int64
    /// A plain file (not a folder, a pipe, a socket or a device).
    public var isRegularFile: Bool

    /// The status of the file at `path`; `nil` (with `errno` set) when it cannot be read.
    public init?(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        self.init(info)
    }

    /// The status of the open file `descriptor`; `nil` (with `errno` set) when it cannot be read.
    public init?(descriptor: Int32) {
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { return nil }
        self.init(info)
    }

    private init(_ info: stat) {
        inode = UInt64(info.st_ino)
        size = Int(info.st_size)
        isRegularFile = info.st_mode & S_IFMT == S_IFREG
        #if canImport(Darwin)
            modifiedNanoseconds = Int64(info.st_mtimespec.tv_sec) * 1_000_000_000 + Int64(info.st_mtimespec.tv_nsec)
        #else
            modifiedNanoseconds = Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
        #endif
    }
}
