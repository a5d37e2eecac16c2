import Foundation
import NIOHTTP1
import WatermarkCore

/// A TAXII 2.1 collection, read with `added_after` and `next` paging, every version of every object by default.
///
/// The mark is the server's clock: a page's `X-TAXII-Date-Added-Last`. `added_after` is sent with exactly six
/// fraction digits, truncated, as strict servers require; because truncation moves the filter back by up to a
/// microsecond, the boundary object may come again and the run drops it by (id, version). A `next` request
/// repeats the first request's filters (servers such as medallion refuse a `next` whose filters changed).
/// Servers that page without `next` are continued from just before the previous page's last `date_added`, so a
/// page ending inside a run of objects that share one `date_added` loses none of them.
struct TAXII21Collector: Collector {
    static let mediaType = "application/taxii+json;version=2.1"

    let settings: TAXIISettings
    let pageSize: Int
    var http: SourceHTTPClient

    var objectsURL: String {
        let root = settings.apiRoot.hasSuffix("/") ? settings.apiRoot : settings.apiRoot + "/"
        return root + "collections/" + Self.percentEncode(settings.collectionID) + "/objects/"
    }

    func fetchPage(since: Timestamp, cursor: String?) async throws(CollectorError) -> CollectorPage {
        var addedAfter = since
        if let cursor, cursor.hasPrefix("after:") {
            // The server pages by date (no `next` token): continue from just before the previous page's last
            // `date_added` (the filter is exclusive), so objects sharing it on the next page are not skipped.
            let last = (try? Timestamp(rfc3339: String(cursor.dropFirst(6)))) ?? since
            addedAfter = max(since, last.adding(.nanoseconds(-1)))
        }
        var query = [(String, String)]()
        query.append(("added_after", addedAfter.formatted(fractionDigits: 6)))
        query.append(("limit", String(pageSize)))
        if settings.versions == .all { query.append(("match[version]", "all")) }
        if let cursor, cursor.hasPrefix("next:") {
            query.append(("next", String(cursor.dropFirst(5))))
        }
        // Keys and values strictly percent-encoded (`match%5Bversion%5D`): a bracket left bare would make the URL
        // parser re-encode the whole query.
        let url =
            objectsURL + "?"
            + query.map { "\(Self.percentEncode($0.0))=\(Self.percentEncode($0.1))" }
            .joined(separator: "&")

        var headers = HTTPHeaders()
        headers.add(name: "Accept", value: Self.mediaType)
        if let authorization = settings.auth.headerValue { headers.add(name: "Authorization", value: authorization) }
        let response = try await http.get(url, headers: headers)
        let page = try await Self.parse(response, url: SourceHTTPClient.displayURL(url))
        // Paging by date must advance, or the run would loop on the same page forever. (A `next` token may
        // legitimately stay the same: medallion reuses its session id.)
        if let cursor, cursor.hasPrefix("after:"), page.next == cursor {
            throw .malformed(
                "the TAXII server pages without next and a whole page of \(page.records.count) objects shares date_added "
                    + "\(cursor.dropFirst(6)): raise page_size above the number of objects added at one instant"
            )
        }
        return page
    }

    /// Turns one envelope into a page. An empty page may be `{}` (no `objects`, no `more`).
    ///
    /// The mark of every record of the page is the page's `X-TAXII-Date-Added-Last`. Without that header, or
    /// with one that is not a timestamp, each object's own `date_added` (some servers include it), else its
    /// `modified`/`created`, stands in: the source's clock, never the collector's; such a page has no
    /// `firstMark`, so no checkpoint is taken inside it.
    static func parse(_ response: SourceResponse, url: String) async throws(CollectorError) -> CollectorPage {
        let body = response.body
        let what = "the TAXII envelope from \(url)"
        let envelope = try JSONRecords.envelope(body, what: what)
        let objects = try JSONRecords.records("objects", of: body, envelope: envelope, what: what)
        let more: Bool
        switch envelope["more"].map({ JSONRecords.value(body[$0]) }) {
        case nil, .null: more = false
        case .bool(let flag): more = flag
        default: throw .malformed("\"more\" in the TAXII envelope from \(url) is not a boolean")
        }
        let next: String? =
            if let range = envelope["next"], case .string(let text) = JSONRecords.value(body[range]) { text } else {
                nil
            }

        var warnings: [String] = []
        func headerTime(_ name: String) -> Timestamp? {
            guard let header = response.headers.first(name: name) else {
                if !objects.isEmpty { warnings.append("\(name) missing from \(url); using the objects' own times") }
                return nil
            }
            guard let time = try? Timestamp(rfc3339: header) else {
                warnings.append(
                    "\(name) \"\(header.prefix(64))\" from \(url) is not a timestamp; using the objects' own times")
                return nil
            }
            return time
        }
        let pageMark = headerTime("X-TAXII-Date-Added-Last")
        let firstMark = pageMark == nil ? nil : headerTime("X-TAXII-Date-Added-First")

        let fields = try await JSONRecords.fields(
            of: objects, wanted: ["id", "modified", "created", "date_added"],
            label: { "object \($0) of the page from \(url)" })
        var records: [CollectedRecord] = []
        records.reserveCapacity(objects.count)
        var newestOwn: Timestamp?
        for (index, object) in fields.enumerated() {
            guard let id = object.string("id"), !id.isEmpty else {
                throw .malformed("object \(index) of the page from \(url) has no \"id\"")
            }
            let modified = object.timestamp("modified") ?? object.timestamp("created")
            // An object without `modified` or `created` (a STIX cyber-observable) is immutable: one version.
            let version = modified?.description ?? object.string("modified") ?? ""
            let own = object.timestamp("date_added") ?? modified
            guard let mark = pageMark ?? own else {
                throw .malformed(
                    "object \(id) from \(url) has no usable X-TAXII-Date-Added-Last header nor a date_added, modified or created time"
                )
            }
            if let own { newestOwn = max(newestOwn ?? own, own) }
            records.append(
                CollectedRecord(id: id, version: version, mark: mark, json: JSONRecords.oneLine(objects[index])))
        }
        // Without the header the objects may come in any order: the page's mark is the newest of them.
        let highWaterMark = pageMark ?? newestOwn
        if pageMark == nil, let newestOwn {
            for index in records.indices { records[index].mark = max(records[index].mark, newestOwn) }
        }

        var cursor: String?
        if more {
            if let next, !next.isEmpty {
                cursor = "next:" + next
            } else if let highWaterMark {
                cursor = "after:" + highWaterMark.description
            } else {
                throw .malformed("the TAXII envelope from \(url) says more=true but gives neither next nor a date")
            }
        }
        var page = CollectorPage(records: records, highWaterMark: highWaterMark, firstMark: firstMark, next: cursor)
        page.warnings = warnings
        return page
    }

    /// Strict percent-encoding of a query value (RFC 3986 unreserved characters only).
    static func percentEncode(_ value: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return value.addingPercentEncoding(withAllowedCharacters: allowed) ?? value
    }
}
