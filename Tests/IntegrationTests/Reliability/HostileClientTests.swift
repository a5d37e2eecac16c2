#if canImport(Glibc)
    import Foundation
    import NIOHTTP1
    import Testing

    /// Misbehaving clients against the real process, over raw sockets: idle and slowloris connections,
    /// connection floods, oversized headers, bodies without a length, pipelining and cut-off bodies.
    @Suite("Reliability: hostile clients", .serialized, .timeLimit(.minutes(3)))
    struct HostileClientTests {
        @Test("hundreds of idle and slowloris connections do not stop other clients; the idle timeout closes them")
        func idleAndSlowConnections() async throws {
            // The idle timeout leaves room for accepting 350 connections on a loaded machine (CI runs every suite at
            // once on 2 cores: 2 s was once not enough), and the waits below are bounded from it.
            let idleTimeout = 10
            let environment = ["IDLE_TIMEOUT_SECONDS": "\(idleTimeout)", "LOG_LEVEL": "info"]
            try await withStorageService(environment: environment) { harness in
                let port = harness.port
                let rssBefore = try ProcessProbe.residentKiB(harness.service.pid)
                let idle = try (0..<300).map { _ in try RawSocket(port: port) }
                let slow = try (0..<50).map { _ in try RawSocket(port: port) }
                let request = Array(
                    "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: \(String(repeating: "z", count: 64))\r\n\r\n")
                let started = ContinuousClock.now
                // The server really holds them all (this is not a backlog effect).
                var held = 0
                try await waitUntil("the server to accept the hostile connections", timeout: .seconds(idleTimeout - 1))
                {
                    held = try ProcessProbe.socketCount(harness.service.pid)
                    return held >= idle.count + slow.count
                }

                // While they hang on, a normal client is served promptly, again and again.
                var served = 0
                var slowest = Duration.zero
                for step in 0..<10 {
                    for socket in slow { try? socket.send(String(request[step])) }
                    let before = ContinuousClock.now
                    let reply = try await harness.http.send(.GET, "/health", timeout: .seconds(idleTimeout / 2))
                    slowest = max(slowest, ContinuousClock.now - before)
                    #expect(reply.status == 200)
                    served += 1
                    try await Task.sleep(for: .milliseconds(100))
                }
                // Served while the hostile connections are held, not once the idle timeout freed them: well under
                // it (2 s was too tight for a full parallel run on a loaded 2-core machine: 2.3 s once).
                #expect(
                    slowest < .seconds(idleTimeout / 2),
                    "a normal request took \(slowest) with 350 hostile connections open")

                // Idle connections are closed by the server after the idle timeout...
                for socket in idle.prefix(20) {
                    let (data, closed) = try socket.receiveUntilClosed(timeout: .seconds(idleTimeout * 2))
                    #expect(closed, "an idle connection was left open")
                    #expect(data.isEmpty)
                }
                // ...and so are slowloris ones, though they send a header byte every 300 ms.
                // The deadline starts here, not at `started`: on a loaded machine the steps above alone may take
                // longer than the idle timeout, and the connections are then already closed when this looks.
                var slowClosed = 0
                var step = 10
                let looking = ContinuousClock.now
                while ContinuousClock.now - looking < .seconds(idleTimeout * 2), slowClosed < slow.count {
                    slowClosed = 0
                    for socket in slow {
                        if (try? socket.send(String(request[step % request.count]))) == nil {
                            slowClosed += 1; continue
                        }
                        if let chunk = try? socket.receiveOnceNonBlocking(), chunk.isEmpty { slowClosed += 1 }
                    }
                    step += 1
                    try await Task.sleep(for: .milliseconds(300))
                }
                #expect(
                    slowClosed == slow.count,
                    "\(slow.count - slowClosed) slowloris connections still open after \(idleTimeout * 2) s")
                try await waitUntil("the server to drop the closed connections", timeout: .seconds(10)) {
                    try ProcessProbe.socketCount(harness.service.pid) < 20
                }
                let rssAfter = try ProcessProbe.residentKiB(harness.service.pid)
                #expect(rssAfter < 512 * 1024, "resident memory \(rssAfter) KiB")
                #expect(try await harness.http.send(.GET, "/health").status == 200)
                withExtendedLifetime(idle) {}
                reportFigures(
                    "hostile_idle_slowloris",
                    [
                        "idle_connections": idle.count, "slowloris_connections": slow.count,
                        "requests_served_meanwhile": served,
                        "connections_held": held,
                        "slowest_request_ms": Int(
                            slowest.components.seconds * 1000 + slowest.components.attoseconds / 1_000_000_000_000_000),
                        "rss_before_kib": rssBefore, "rss_after_kib": rssAfter,
                    ]
                )
            }
        }

        @Test(
            "a slow body (one byte every 300 ms) is cut off by REQUEST_TIMEOUT_SECONDS; the idle timeout alone would not"
        )
        func slowBody() async throws {
            // The idle timeout is longer than the whole test: only the request timeout can end the trickle.
            let environment = ["IDLE_TIMEOUT_SECONDS": "60", "REQUEST_TIMEOUT_SECONDS": "2", "LOG_LEVEL": "info"]
            try await withStorageService(environment: environment) { harness in
                let slow = try RawSocket(port: harness.port)
                try slow.send(
                    "PUT /api/v1/watermarks/slow-body HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        + "Content-Length: 1000\r\n\r\n{"
                )
                let started = ContinuousClock.now
                var closedAfter: Duration?
                while ContinuousClock.now - started < .seconds(10) {
                    if (try? slow.send(" ")) == nil || (try? slow.receiveOnceNonBlocking()) == Data() {
                        closedAfter = ContinuousClock.now - started
                        break
                    }
                    try await Task.sleep(for: .milliseconds(300))
                }
                let closed = try #require(closedAfter, "a request trickling its body for 10 s is still being read")
                #expect(closed >= .milliseconds(1500) && closed < .seconds(5), "closed after \(closed)")
                #expect(try await harness.http.send(.GET, "/api/v1/watermarks/slow-body").status == 404)
                #expect(try await harness.http.send(.GET, "/health").status == 200)
                reportFigures(
                    "hostile_slow_body",
                    [
                        "closed_after_ms": Int(
                            closed.components.seconds * 1000 + closed.components.attoseconds / 1_000_000_000_000_000)
                    ]
                )
            }
        }

        @Test("a request that arrives in time is served, whatever REQUEST_TIMEOUT_SECONDS")
        func normalRequestsUnaffected() async throws {
            try await withStorageService(environment: ["REQUEST_TIMEOUT_SECONDS": "1", "LOG_LEVEL": "info"]) {
                harness in
                // Keep-alive connection used across several timeouts: only a request in progress is timed.
                for minute in 0..<4 {
                    let reply = try await harness.http.send(
                        .PUT, "/api/v1/watermarks/steady",
                        json: #"{"timestamp":"2025-01-01T00:0\#(minute):00Z","status":"success"}"#
                    )
                    #expect(reply.status == (minute == 0 ? 201 : 200))
                    try await Task.sleep(for: .milliseconds(600))
                }
            }
        }

        @Test("a connection flood is held to MAX_CONNECTIONS; the others wait and are served in turn")
        func connectionLimit() async throws {
            let environment = ["IDLE_TIMEOUT_SECONDS": "1", "MAX_CONNECTIONS": "20", "LOG_LEVEL": "info"]
            try await withStorageService(environment: environment) { harness in
                let flood = try (0..<120).map { _ in try RawSocket(port: harness.port) }
                // The server takes connections up to its limit (the listener and 20) before the peak is looked at,
                // so a server that accepts nothing cannot pass for one that holds the limit.
                var peak = 0
                try await waitUntil("the server to accept up to MAX_CONNECTIONS", timeout: .seconds(10)) {
                    peak = try ProcessProbe.socketCount(harness.service.pid)
                    return peak >= 1 + 20
                }
                for _ in 0..<10 {
                    peak = max(peak, try ProcessProbe.socketCount(harness.service.pid))
                    try await Task.sleep(for: .milliseconds(50))
                }
                // The listener and the accepted connections, nothing more. The limit pauses accepting once reached,
                // but an accept pass that began below it takes up to NIO's four connections per read (peak 24 seen
                // once in CI, where 20 + 3 had been allowed as slack): 1 + 20 + 3.
                let bound = 1 + 20 + 3
                #expect(peak <= bound, "\(peak) sockets open with MAX_CONNECTIONS=20")
                // The flood drains through the idle timeout, and a real client gets its turn.
                let reply = try await harness.http.send(.GET, "/health", timeout: .seconds(20))
                #expect(reply.status == 200)
                #expect(try ProcessProbe.socketCount(harness.service.pid) <= bound)
                withExtendedLifetime(flood) {}
                reportFigures(
                    "hostile_connection_flood",
                    ["flood_connections": flood.count, "max_connections": 20, "peak_sockets": peak])
            }
        }

        @Test("oversized headers, no body length, chunked bodies, pipelining, garbage and cut-off bodies")
        func malformedTraffic() async throws {
            try await withStorageService(environment: ["LOG_LEVEL": "info"]) { harness in
                let port = harness.port

                // Oversized header: refused with a 4xx or a closed connection, never served.
                let big = try RawSocket(port: port)
                try? big.send(
                    "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "a", count: 200_000))\r\n\r\n")
                let bigReply = try big.receiveUntilClosed(timeout: .seconds(5))
                let bigResponses = RawSocket.parseResponses(bigReply.data)
                #expect(bigReply.closed, "the connection with an oversized header stays open")
                #expect(bigResponses.allSatisfy { (400..<500).contains($0.status) }, "\(bigResponses.map(\.status))")

                // A body without Content-Length or chunking has no body (RFC 9112): 400, nothing stored.
                let noLength = try RawSocket(port: port)
                try noLength.send(
                    "PUT /api/v1/watermarks/no-length HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n"
                )
                let noLengthReply = try noLength.receiveResponses(1, timeout: .seconds(5))
                #expect(noLengthReply.first?.status == 400)
                #expect(noLengthReply.first?.body.contains("invalid_json") == true)
                noLength.close()
                #expect(try await harness.http.send(.GET, "/api/v1/watermarks/no-length").status == 404)

                // A chunked body over the 64 KiB limit is 413 and stores nothing.
                let chunked = try RawSocket(port: port)
                var request = "PUT /api/v1/watermarks/chunked HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                request += "Transfer-Encoding: chunked\r\n\r\n"
                let chunk = String(repeating: " ", count: 16 * 1024)
                for _ in 0..<6 { request += String(chunk.utf8.count, radix: 16) + "\r\n" + chunk + "\r\n" }
                request += "0\r\n\r\n"
                try? chunked.send(request)
                let chunkedReply = try chunked.receiveResponses(1, timeout: .seconds(5))
                #expect(chunkedReply.first?.status == 413)
                chunked.close()
                #expect(try await harness.http.send(.GET, "/api/v1/watermarks/chunked").status == 404)

                // Pipelined requests are all answered, in order.
                let pipelined = try RawSocket(port: port)
                let put = #"{"timestamp":"2025-01-01T00:00:00Z","status":"success"}"#
                try pipelined.send(
                    "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                        + "PUT /api/v1/watermarks/piped HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        + "Content-Length: \(put.utf8.count)\r\n\r\n\(put)"
                        + "GET /api/v1/watermarks/piped HTTP/1.1\r\nHost: x\r\n\r\n"
                        + "GET /api/v1/watermarks/nothing-here HTTP/1.1\r\nHost: x\r\n\r\n"
                )
                let pipedReplies = try pipelined.receiveResponses(4, timeout: .seconds(5))
                #expect(pipedReplies.map(\.status) == [200, 201, 200, 404])
                #expect(pipedReplies.count == 4 && pipedReplies[2].body.contains("\"version\":1"))
                pipelined.close()

                // Garbage is refused with the contract's JSON error, and the connection closed.
                let garbage = try RawSocket(port: port)
                try? garbage.send("HELLO THERE\r\n\u{01}\u{02}\r\n\r\n")
                let garbageReply = try garbage.receiveUntilClosed(timeout: .seconds(5))
                #expect(garbageReply.closed)
                let garbageAnswers = RawSocket.parseResponses(garbageReply.data)
                #expect(garbageAnswers.map(\.status) == [400])
                #expect(garbageAnswers.first?.body.contains(#""code":"malformed_request""#) == true)

                // A bad header line after a good request: the good one is answered, the bad one with JSON too.
                let unparsable = try RawSocket.answersToUnparsableRequest(port: port, path: "/health")
                #expect(unparsable.statuses == [200, 400] && unparsable.closed, "\(unparsable)")
                #expect(unparsable.errorCode == "malformed_request" && unparsable.contentType == "application/json")

                // Clients that vanish mid-body, with FIN or with RST: nothing stored, nothing broken.
                for index in 0..<40 {
                    let cut = try RawSocket(port: port)
                    try cut.send(
                        "PUT /api/v1/watermarks/cut-\(index) HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            + "Content-Length: 200\r\n\r\n{\"timestamp\":\"2025-01-01T00:00:00Z\","
                    )
                    if index.isMultiple(of: 2) { cut.reset() } else { cut.close() }
                }
                try await Task.sleep(for: .milliseconds(200))
                #expect(harness.service.isRunning)
                #expect(try await harness.http.send(.GET, "/health").status == 200)
                let listed = try await harness.http.send(.GET, "/api/v1/watermarks")
                #expect(try listed.json()["watermarks"] as? [[String: Any]] != nil)
                #expect(!listed.text.contains("cut-"))
                #expect(!harness.service.log.contains("Unexpected error"), "\(harness.service.log)")
            }
        }
    }

    extension RawSocket {
        /// A read that does not wait: empty at end of stream, nil when nothing is there.
        func receiveOnceNonBlocking() throws -> Data? {
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count = recv(descriptor, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if count > 0 { return Data(buffer[0..<count]) }
            if count == 0 { return Data() }
            if errno == EAGAIN || errno == EWOULDBLOCK { return nil }
            return Data()
        }
    }
#endif
