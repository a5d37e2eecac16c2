import Foundation
import NIOHTTP1
import StorageClient
import WatermarkCore

/// A TAXII 2.1 collection, read with `added_after` and `next` paging, every version of every object by default.
///
/// The mark is the server's clock: a page's `X-TAXII-Date-Added-Last`. `added_after` is sent with exactly six
/// fraction digits, truncated, as strict servers require; because truncation moves the filter back by up to a
/// microsecond, the boundary object may come again and the run drops it by (id, version). A `next` request
/// repeats the first request's filters (servers such as medallion refuse a `next` whose filters changed), and is
/// never sent twice: a retry asks again from just before the previous page's last `date_added`.
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
        var next: String?
        // Where the run goes on if the request fails and must be sent again: just before the previous page's last
        // `date_added` (the filter is exclusive, pages come in `date_added` order), so objects sharing it are read
        // again and dropped by (id, version) rather than skipped.
        var continueAfter: Timestamp?
        var previousMark: Timestamp?
        var listedAt: Timestamp?
        if let cursor, cursor.hasPrefix("after:") {
            // The server pages by date (no `next` token).
            addedAfter = Self.justBefore(String(cursor.dropFirst(6)), since: since)
        } else if let cursor, cursor.hasPrefix("next:") {
            // `next:<the session's added_after> <the page's last date_added> <the first answer's Date> <token>` (see
            // `parse`; the two instants may be empty).
            let parts = cursor.dropFirst(5).split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)
            if parts.count == 4 {
                addedAfter = (try? Timestamp(rfc3339: String(parts[0]))) ?? since
                previousMark = try? Timestamp(rfc3339: String(parts[1]))
                continueAfter = Self.justBefore(String(parts[1]), since: since)
                listedAt = try? Timestamp(rfc3339: String(parts[2]))
                next = String(parts[3])
            }
        }
        let url = pageURL(addedAfter: addedAfter, next: next)
        // A `next` request is never sent twice: servers advance a paging session as they answer (medallion pops
        // the page it serves), so repeating a request whose answer was lost, or came back as a 5xx from a proxy,
        // would be answered with the page after it and one page would be missed for good. A retry asks again by date.
        let retryURL = continueAfter.map { pageURL(addedAfter: $0, next: nil) }

        var headers = HTTPHeaders()
        headers.add(name: "Accept", value: Self.mediaType)
        if let authorization = settings.auth.headerValue { headers.add(name: "Authorization", value: authorization) }
        let response: SourceResponse
        do {
            response = try await http.get(url, headers: headers, retryURL: retryURL)
        } catch {
            // OpenCTI serves the last version only and refuses `all` with 400 ("only 'last' supported"; older
            // versions: "Unsupported parameters provided"): every run failed on an HTTP error that did not say what to
            // change.
            if case .httpStatus(400, _, let detail) = error, settings.versions == .all,
                detail.lowercased().contains("version") || detail.lowercased().contains("unsupported param")
            {
                throw .malformed(
                    "the TAXII server refuses match[version]=all (\(detail)): set \"versions\": \"last\" for this "
                        + "source (it serves the newest version of each object only)")
            }
            throw error
        }
        // A session's `next` requests repeat the filters of the request that opened it.
        var page = try await Self.parse(
            response, url: SourceHTTPClient.displayURL(url),
            askedAfter: response.isRetryAnswer ? continueAfter ?? addedAfter : addedAfter, listedAt: listedAt)
        page.retried = response.isRetryAnswer
        // Pages come in `date_added` order: a `next` page that starts before the page before it ended is the first
        // page again from a server that ignores `next` yet keeps saying `more`, which would be asked forever.
        if let previousMark, let first = page.firstMark, first < previousMark {
            throw .malformed(
                "the TAXII server answered next with objects added from \(first), before the previous page's last "
                    + "date_added \(previousMark): it does not page by next")
        }
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

    /// The objects URL asking for what was added after `addedAfter`, with the first request's filters and `next`.
    private func pageURL(addedAfter: Timestamp, next: String?) -> String {
        var query = [(String, String)]()
        query.append(("added_after", addedAfter.formatted(fractionDigits: 6)))
        query.append(("limit", String(pageSize)))
        if settings.versions == .all { query.append(("match[version]", "all")) }
        if let next { query.append(("next", next)) }
        // Keys and values strictly percent-encoded (`match%5Bversion%5D`): a bracket left bare would make the URL
        // parser re-encode the whole query.
        return objectsURL + "?"
            + query.map { "\(Self.percentEncode($0.0))=\(Self.percentEncode($0.1))" }.joined(separator: "&")
    }

    /// The `added_after` that reads again from a page's last `date_added` (`mark`, as a cursor carries it): a
    /// nanosecond before it, never before the run's own `since`; `since` when the cursor carries no mark.
    private static func justBefore(_ mark: String, since: Timestamp) -> Timestamp {
        guard let last = try? Timestamp(rfc3339: mark) else { return since }
        return max(since, last.adding(.nanoseconds(-1)))
    }

    /// Turns one envelope into a page. An empty page may be `{}` (no `objects`, no `more`).
    ///
    /// The mark of every record of the page is the page's `X-TAXII-Date-Added-Last`. Without that header, or
    /// with one that is not a timestamp, or without an `X-TAXII-Date-Added-First` no later than it, each object's own
    /// `date_added` (some servers include it) stands in: the
    /// server's clock, never the collector's; such a page has no `firstMark`, so no checkpoint is taken inside it.
    /// Without either, an object's `modified` is its producer's clock, which may run ahead of the server's: marked
    /// with it, a run moved the watermark past objects the server added meanwhile, which the next run's
    /// `added_after` then passed over for good. Such a page is marked with the server's `Date` of the run's first
    /// answer (`listedAt`, carried from page to page; this answer's own for the first), before which every object
    /// the run lists was added; without a `Date` either, the objects' own times stand in, with a warning.
    /// `askedAfter` is the `added_after` of the request that opened the paging session, which its `next` requests
    /// repeat.
    static func parse(
        _ response: SourceResponse, url: String, askedAfter: Timestamp? = nil, listedAt: Timestamp? = nil
    ) async throws(CollectorError) -> CollectorPage {
        let body = response.body
        let what = "the TAXII envelope from \(url)"
        let envelope = try JSONRecords.envelope(body, what: what)
        let objects = try JSONRecords.records("objects", of: body, envelope: envelope, what: what)
        let next: String? =
            if let range = envelope["next"], case .string(let text) = JSONRecords.value(body[range]) { text } else {
                nil
            }
        let more: Bool
        switch envelope["more"].map({ JSONRecords.value(body[$0]) }) {
        // A server that gives a `next` but leaves `more` out has more: stopping there marked the run past the pages
        // not read (with the server's Date, for objects without date_added) and the next run skipped them. Not after
        // an empty page: one that puts `next` on its last page too would be followed into empty pages for ever.
        case nil, .null: more = !(next ?? "").isEmpty && !objects.isEmpty
        case .bool(let flag): more = flag
        default: throw .malformed("\"more\" in the TAXII envelope from \(url) is not a boolean")
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
        // The two headers describe the page only as a pair, first no later than last (TAXII 2.1 sends both). A server
        // that sends `-Last` alone may send its clock (one public server answers `now()` every time): as the page's
        // mark it moved the watermark past the objects of the pages not read yet, and a retry asked by date from it
        // skipped them. Without the pair, the page is marked as one without headers.
        var pageMark = headerTime("X-TAXII-Date-Added-Last")
        var firstMark = pageMark == nil ? nil : headerTime("X-TAXII-Date-Added-First")
        if let last = pageMark, firstMark.map({ $0 > last }) ?? true {
            if let first = firstMark {
                warnings.append(
                    "X-TAXII-Date-Added-First \(first) from \(url) is after X-TAXII-Date-Added-Last \(last); using the "
                        + "objects' own times")
            }
            pageMark = nil
            firstMark = nil
        }
        // Whole seconds: the instant is floored, which only reads a little more again.
        let listed =
            listedAt
            ?? response.headers.first(name: "Date").flatMap(RetryPolicy.httpDate).map {
                Timestamp(seconds: Int64($0.timeIntervalSince1970.rounded(.down)))
            }

        let fields = try await JSONRecords.fields(
            of: objects, wanted: ["id", "modified", "created", "date_added"],
            label: { "object \($0) of the page from \(url)" })
        var records: [CollectedRecord] = []
        records.reserveCapacity(objects.count)
        var newestOwn: Timestamp?
        var withoutDateAdded = 0
        for (index, object) in fields.enumerated() {
            guard let id = object.string("id"), !id.isEmpty else {
                throw .malformed("object \(index) of the page from \(url) has no \"id\"")
            }
            let modified = object.timestamp("modified") ?? object.timestamp("created")
            // An object without `modified` or `created` (a STIX cyber-observable) is immutable: one version. A
            // `modified` that is no RFC 3339 time (`+0000`, ten fraction digits) still tells its versions apart:
            // `created`, the same for all of them, would have kept only the first.
            let version =
                object.timestamp("modified")?.description ?? object.string("modified") ?? modified?.description
                ?? object.string("created") ?? ""
            let dateAdded = object.timestamp("date_added")
            if dateAdded == nil { withoutDateAdded += 1 }
            let own = dateAdded ?? modified
            guard let mark = pageMark ?? own ?? listed else {
                throw .malformed(
                    "object \(id) from \(url) has no usable X-TAXII-Date-Added-Last header nor a date_added, modified or created time"
                )
            }
            if let own { newestOwn = max(newestOwn ?? own, own) }
            records.append(
                CollectedRecord(id: id, version: version, mark: mark, json: JSONRecords.oneLine(objects[index])))
        }
        // Neither the header nor every object's `date_added`: the server's clock is its `Date` (see above).
        let producersClock = pageMark == nil && withoutDateAdded > 0
        let highWaterMark: Timestamp?
        if producersClock, let listed {
            highWaterMark = listed
            for index in records.indices { records[index].mark = listed }
            warnings.append(
                "\(withoutDateAdded) objects from \(url) without date_added: marked with the server's Date of the "
                    + "run's first answer (\(listed))")
        } else {
            // Without the header the objects may come in any order: the page's mark is the newest of them.
            highWaterMark = pageMark ?? newestOwn
            if pageMark == nil, let newestOwn {
                for index in records.indices { records[index].mark = max(records[index].mark, newestOwn) }
            }
        }

        var cursor: String?
        if more {
            if let next, !next.isEmpty {
                // The token goes with the `added_after` its session was opened with, which each of its requests
                // repeats, with the server's last `date_added`, for a retry to ask again by date (`fetchPage`;
                // without the header, the objects' own times say nothing of that order), and with the instant the
                // listing began.
                cursor =
                    "next:\(askedAfter?.description ?? "") \(pageMark?.description ?? "") "
                    + "\(listed?.description ?? "") \(next)"
            } else if producersClock {
                throw .malformed(
                    "the TAXII server at \(url) pages without next and tells no date_added (no X-TAXII-Date-Added "
                        + "headers, objects without date_added): its pages cannot be followed by date; raise page_size "
                        + "so that a run's objects fit in one page")
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
