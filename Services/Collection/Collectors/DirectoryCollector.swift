import Foundation
import WatermarkCore

/// A local drop folder of `.json` (object, array or STIX bundle) and `.ndjson` files; works offline.
///
/// Incremental by a record timestamp field: each run reads every file and keeps the records stamped at or after
/// `since` (inclusive, so the boundary record is read again and dropped by the run's dedup). One page per file,
/// in file-name order; hidden files (`.name`) are ignored, so a writer can create `.x.json` and rename it.
struct DirectoryCollector: Collector {
    let settings: DirectorySettings

    func fetchPage(since: Timestamp, cursor: String?) async throws(CollectorError) -> CollectorPage {
        let files = try listFiles()
        // The cursor is the last file name read: files appearing meanwhile are still picked up in order.
        guard let index = files.firstIndex(where: { cursor == nil || $0 > cursor! }) else {
            return CollectorPage(records: [])
        }
        let name = files[index]
        let records = try read(name, since: since)
        return CollectorPage(records: records, next: index + 1 < files.count ? name : nil)
    }

    func listFiles() throws(CollectorError) -> [String] {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: settings.path)
        } catch {
            throw .file(path: settings.path, detail: "the drop folder cannot be listed (\(error.localizedDescription))")
        }
        return names.filter { name in
            !name.hasPrefix(".") && (name.hasSuffix(".json") || name.hasSuffix(".ndjson"))
        }.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
    }

    private func read(_ name: String, since: Timestamp) throws(CollectorError) -> [CollectedRecord] {
        let path = (settings.path as NSString).appendingPathComponent(name)
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw .file(path: path, detail: error.localizedDescription)
        }
        let objects =
            name.hasSuffix(".ndjson")
            ? try JSONRecords.records(fromLines: data, what: name)
            : try JSONRecords.records(fromDocument: data, what: name)
        var records: [CollectedRecord] = []
        for (index, object) in objects.enumerated() {
            let id: String
            switch object[settings.idField] {
            case let text as String where !text.isEmpty: id = text
            case let number as NSNumber: id = number.stringValue
            default: throw .malformed("\(name): record \(index) has no \"\(settings.idField)\"")
            }
            var field = settings.timestampField
            if object[field] == nil, let fallback = settings.fallbackTimestampField { field = fallback }
            guard let text = object[field] as? String else {
                throw .malformed("\(name): record \(id) has no \"\(settings.timestampField)\" timestamp")
            }
            let mark: Timestamp
            do {
                mark = try JSONRecords.naiveUTC(text)
            } catch {
                throw .malformed("\(name): record \(id) field \"\(field)\": \(error)")
            }
            guard mark >= since else { continue }
            records.append(
                CollectedRecord(
                    id: id, version: mark.description, mark: mark, json: try JSONRecords.encode(object, what: id)
                )
            )
        }
        return records
    }
}
