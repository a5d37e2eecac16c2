import HTTPTypes
import Hummingbird
import NIOConcurrencyHelpers

/// The methods each registered path answers, for `405 Method Not Allowed` with an `Allow` header.
///
/// Hummingbird's router answers an unknown method on a known path as "not found"; the error middleware
/// asks this table whether the path exists with other methods. It is filled while routes are added
/// (through `RecordingRouter`), so it can never disagree with the router.
package final class RouteTable: Sendable {
    private let entries = NIOLockedValueBox<[(segments: [Substring], methods: Set<String>)]>([])

    package init() {}

    package func record(_ path: String, method: HTTPRequest.Method) {
        let segments = path.split(separator: "/")
        entries.withLockedValue { entries in
            if let index = entries.firstIndex(where: { $0.segments == segments }) {
                entries[index].methods.insert(method.rawValue)
            } else {
                entries.append((segments, [method.rawValue]))
            }
        }
    }

    /// The methods allowed on `path`, sorted, with HEAD wherever GET is; empty for an unknown path.
    package func allowedMethods(for path: String) -> [String] {
        let segments = path.split(separator: "/")
        var methods = Set<String>()
        for entry in entries.withLockedValue({ $0 }) where Self.matches(entry.segments, segments) {
            methods.formUnion(entry.methods)
        }
        if methods.contains("GET") { methods.insert("HEAD") }
        return methods.sorted()
    }

    /// Every registered path and its methods, for checks against the API description.
    package var routes: [(path: String, methods: [String])] {
        entries.withLockedValue { entries in
            entries.map { ("/" + $0.segments.joined(separator: "/"), $0.methods.sorted()) }
        }
    }

    private static func matches(_ pattern: [Substring], _ segments: [Substring]) -> Bool {
        guard pattern.count == segments.count else { return false }
        return zip(pattern, segments).allSatisfy { expected, actual in
            expected.hasPrefix(":") || expected.hasPrefix("{") || expected == actual
        }
    }
}

/// A router (or group) front that records every route it adds in a `RouteTable`.
package struct RecordingRouter<Base: RouterMethods>: RouterMethods {
    package typealias Context = Base.Context
    package let base: Base
    package let table: RouteTable

    package init(_ base: Base, table: RouteTable) {
        self.base = base
        self.table = table
    }

    @discardableResult
    package func on<Responder: HTTPResponder>(
        _ path: RouterPath, method: HTTPRequest.Method, responder: Responder
    ) -> Self where Responder.Context == Context {
        base.on(path, method: method, responder: responder)
        table.record(path.description, method: method)
        return self
    }

    @discardableResult
    package func add(middleware: any MiddlewareProtocol<Request, Response, Context>) -> Self {
        base.add(middleware: middleware)
        return self
    }
}
