import Foundation
import NIOHTTP1
import WatermarkCore

/// A TAXII 2.1 collection, read with `added_after` and `next` paging.
///
/// The mark is the server's clock: a page's `X-TAXII-Date-Added-Last`. `added_after` is sent with exactly six
/// fraction digits, truncated, as strict servers require; because truncation moves the filter back by up to a
/// microsecond, the boundary object may come again and the run drops it by (id, modified).
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
        var query = [(String, String)]()
        if let cursor, cursor.hasPrefix("after:") {
            // The server pages by date (no `next` token): continue after the previous page's last object.
            addedAfter = (try? Timestamp(rfc3339: String(cursor.dropFirst(6)))) ?? since
        }
        query.append(("added_after", addedAfter.formatted(fractionDigits: 6)))
        query.append(("limit", String(pageSize)))
        if let cursor, cursor.hasPrefix("next:") {
            query.append(("next", String(cursor.dropFirst(5))))
        }
        let url = objectsURL + "?" + query.map { "\($0.0)=\(Self.percentEncode($0.1))" }.joined(separator: "&")

        var headers = HTTPHeaders()
        headers.add(name: "Accept", value: Self.mediaType)
        if let authorization = settings.auth.headerValue { headers.add(name: "Authorization", value: authorization) }
        let response = try await http.get(url, headers: headers)
        let page = try Self.parse(response, url: SourceHTTPClient.displayURL(url))
        // Paging by date must advance, or the run would loop on the same page forever. (A `next` token may
        // legitimately stay the same: medallion reuses its session id.)
        if let cursor, cursor.hasPrefix("after:"), page.next == cursor {
            throw .malformed("the TAXII server keeps answering more=true without advancing past \(addedAfter)")
        }
        return page
    }

    /// Turns one envelope into a page. An empty page may be `{}` (no `objects`, no `more`).
    static func parse(_ response: SourceResponse, url: String) throws(CollectorError) -> CollectorPage {
        let envelope = try JSONRecords.object(from: response.body, what: "the TAXII envelope from \(url)")
        let objects: [[String: Any]]
        switch envelope["objects"] {
        case nil, is NSNull: objects = []
        case let list as [[String: Any]]: objects = list
        default: throw .malformed("\"objects\" in the TAXII envelope from \(url) is not an array of objects")
        }
        let more: Bool
        switch envelope["more"] {
        case nil, is NSNull: more = false
        case let flag as Bool: more = flag
        default: throw .malformed("\"more\" in the TAXII envelope from \(url) is not a boolean")
        }
        let next = envelope["next"] as? String

        var pageMark: Timestamp?
        if let header = response.headers.first(name: "X-TAXII-Date-Added-Last") {
            do {
                pageMark = try Timestamp(rfc3339: header)
            } catch {
                throw .malformed("X-TAXII-Date-Added-Last \"\(header)\" from \(url) is not a timestamp: \(error)")
            }
        }

        var records: [CollectedRecord] = []
        records.reserveCapacity(objects.count)
        for (index, object) in objects.enumerated() {
            guard let id = object["id"] as? String, !id.isEmpty else {
                throw .malformed("object \(index) of the page from \(url) has no \"id\"")
            }
            let modified =
                JSONRecords.timestamp(object, "modified", assumeUTC: false)
                ?? JSONRecords.timestamp(object, "created", assumeUTC: false)
            // Without the header (servers must send it) fall back to the object's own time: it never moves
            // the watermark past the server's clock, at worst it re-reads objects that are then dropped.
            guard let mark = pageMark ?? modified else {
                throw .malformed(
                    "object \(id) from \(url) has no X-TAXII-Date-Added-Last header nor a \"modified\"/\"created\" time"
                )
            }
            let version = modified?.description ?? (object["modified"] as? String) ?? mark.description
            records.append(
                CollectedRecord(id: id, version: version, mark: mark, json: try JSONRecords.encode(object, what: id))
            )
        }

        var cursor: String?
        if more {
            if let next, !next.isEmpty {
                cursor = "next:" + next
            } else if let pageMark {
                cursor = "after:" + pageMark.description
            } else {
                throw .malformed("the TAXII envelope from \(url) says more=true but gives neither next nor a date")
            }
        }
        return CollectorPage(records: records, highWaterMark: pageMark, next: cursor)
    }

    /// Strict percent-encoding of a query value (RFC 3986 unreserved characters only).
    static func percentEncode(_ value: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return value.addingPercentEncoding(withAllowedCharacters: allowed) ?? value
    }
}
