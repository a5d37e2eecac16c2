#if canImport(Glibc)
    import Foundation
    import Glibc

    /// A blocking TCP connection to 127.0.0.1 for tests that misbehave on purpose: idle, slow, oversized,
    /// pipelined or cut-off requests that an HTTP client library would never send.
    ///
    /// Linux only (the checks read `/proc`). Not `Sendable`: one task owns each socket. Blocking calls are bounded by `SO_RCVTIMEO`/`SO_SNDTIMEO`.
    final class RawSocket {
        private(set) var descriptor: Int32

        /// Connects, with reads and writes timing out after `timeout`.
        init(port: Int, timeout: Duration = .seconds(5)) throws {
            descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard descriptor >= 0 else { throw ProcessFailure("socket() failed: errno \(errno)") }
            var interval = timeval(
                tv_sec: Int(timeout.components.seconds),
                tv_usec: Int(timeout.components.attoseconds / 1_000_000_000_000))
            setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &interval, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &interval, socklen_t(MemoryLayout<timeval>.size))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard result == 0 else {
                let error = errno
                _ = Glibc.close(descriptor)
                throw ProcessFailure("connect() to port \(port) failed: errno \(error)")
            }
        }

        deinit { close() }

        func close() {
            if descriptor >= 0 {
                _ = Glibc.close(descriptor)
                descriptor = -1
            }
        }

        /// Closes with a TCP reset instead of a FIN: an abrupt disconnect.
        func reset() {
            var option = linger(l_onoff: 1, l_linger: 0)
            setsockopt(descriptor, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
            close()
        }

        /// Writes all of `text`; throws when the peer is gone.
        func send(_ text: String) throws {
            try send(Data(text.utf8))
        }

        func send(_ data: Data) throws {
            try data.withUnsafeBytes { buffer in
                var offset = 0
                while offset < buffer.count {
                    let written = Glibc.send(
                        descriptor, buffer.baseAddress! + offset, buffer.count - offset, Int32(MSG_NOSIGNAL))
                    guard written > 0 else { throw ProcessFailure("send() failed: errno \(errno)") }
                    offset += written
                }
            }
        }

        /// One read: the bytes received, empty at end of stream (the server closed), nil on timeout.
        func receiveOnce(max: Int = 65_536) throws -> Data? {
            var buffer = [UInt8](repeating: 0, count: max)
            let count = recv(descriptor, &buffer, max, 0)
            if count > 0 { return Data(buffer[0..<count]) }
            if count == 0 { return Data() }
            if errno == EAGAIN || errno == EWOULDBLOCK { return nil }
            if errno == ECONNRESET { return Data() }
            throw ProcessFailure("recv() failed: errno \(errno)")
        }

        /// Reads until the server closes the connection or `timeout` passes; returns what came.
        func receiveUntilClosed(timeout: Duration) throws -> (data: Data, closed: Bool) {
            let deadline = ContinuousClock.now + timeout
            var received = Data()
            while ContinuousClock.now < deadline {
                guard let chunk = try receiveOnce() else { continue }
                if chunk.isEmpty { return (received, true) }
                received += chunk
            }
            return (received, false)
        }

        /// Sends `GET path` and then a request whose head is not HTTP/1.1 (a header line without a colon) on one
        /// connection, and reads until the server closes it: the statuses of the answers, the last answer's
        /// `error.code` (the contract's JSON error body), its `Content-Type`, and whether the connection closed.
        static func answersToUnparsableRequest(port: Int, path: String) throws -> (
            statuses: [Int], errorCode: String?, contentType: String?, closed: Bool
        ) {
            let socket = try RawSocket(port: port)
            defer { socket.close() }
            try socket.send(
                "GET \(path) HTTP/1.1\r\nHost: x\r\n\r\n" + "GET \(path) HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
            let reply = try socket.receiveUntilClosed(timeout: .seconds(10))
            let responses = parseResponses(reply.data)
            let error = responses.last.flatMap {
                (try? JSONSerialization.jsonObject(with: Data($0.body.utf8))) as? [String: Any]
            }
            return (
                responses.map(\.status), (error?["error"] as? [String: Any])?["code"] as? String,
                responses.last?.contentType, reply.closed
            )
        }

        /// Reads until `count` HTTP responses have fully arrived (by Content-Length), or the timeout.
        func receiveResponses(_ count: Int, timeout: Duration) throws -> [(
            status: Int, body: String, contentType: String?
        )] {
            let deadline = ContinuousClock.now + timeout
            var received = Data()
            while ContinuousClock.now < deadline {
                let responses = Self.parseResponses(received)
                if responses.count >= count { return responses }
                guard let chunk = try receiveOnce() else { continue }
                if chunk.isEmpty { return Self.parseResponses(received) }
                received += chunk
            }
            return Self.parseResponses(received)
        }

        /// Complete responses in `data`, in order (bodies by `Content-Length`), with their `Content-Type`.
        static func parseResponses(_ data: Data) -> [(status: Int, body: String, contentType: String?)] {
            let bytes = [UInt8](data)
            let separator: [UInt8] = Array("\r\n\r\n".utf8)
            var responses: [(status: Int, body: String, contentType: String?)] = []
            var start = 0
            while start < bytes.count {
                guard let headerEnd = firstIndex(of: separator, in: bytes, from: start) else { break }
                let head = String(decoding: bytes[start..<headerEnd], as: UTF8.self)
                let lines = head.components(separatedBy: "\r\n")
                guard let statusLine = lines.first, statusLine.hasPrefix("HTTP/1.1 "),
                    let status = Int(statusLine.dropFirst(9).prefix(3))
                else { break }
                var length = 0
                var contentType: String?
                for line in lines.dropFirst() {
                    let value = line.drop { $0 != ":" }.dropFirst().trimmingCharacters(in: .whitespaces)
                    if line.lowercased().hasPrefix("content-length:") { length = Int(value) ?? 0 }
                    if line.lowercased().hasPrefix("content-type:") { contentType = value }
                }
                let bodyStart = headerEnd + separator.count
                guard bytes.count - bodyStart >= length else { break }
                responses.append(
                    (status, String(decoding: bytes[bodyStart..<(bodyStart + length)], as: UTF8.self), contentType))
                start = bodyStart + length
            }
            return responses
        }

        private static func firstIndex(of needle: [UInt8], in bytes: [UInt8], from start: Int) -> Int? {
            guard bytes.count >= needle.count else { return nil }
            var index = start
            while index + needle.count <= bytes.count {
                if bytes[index] == needle[0], Array(bytes[index..<(index + needle.count)]) == needle { return index }
                index += 1
            }
            return nil
        }
    }

    /// Facts about a running process from `/proc` (Linux): open sockets and resident memory.
    enum ProcessProbe {
        /// Open socket descriptors of `pid`; throws when `/proc` cannot tell (so no check passes on a missing figure).
        static func socketCount(_ pid: Int32) throws -> Int {
            let folder = "/proc/\(pid)/fd"
            guard let entries = try? FileManager.default.contentsOfDirectory(atPath: folder) else {
                throw ProcessFailure("cannot list \(folder)")
            }
            return entries.filter { entry in
                ((try? FileManager.default.destinationOfSymbolicLink(atPath: "\(folder)/\(entry)")) ?? "").hasPrefix(
                    "socket:")
            }.count
        }

        /// Resident memory of `pid` in KiB (`VmRSS`); throws when `/proc` cannot tell.
        static func residentKiB(_ pid: Int32) throws -> Int {
            guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
                let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
                let kib = Int(line.split(separator: " ").dropFirst().first ?? "")
            else { throw ProcessFailure("no VmRSS in /proc/\(pid)/status") }
            return kib
        }
    }
#endif
