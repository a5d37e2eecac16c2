import NIOConcurrencyHelpers

/// The values last read or written of up to `capacity` keys, for reads that must not wait behind the writer
/// nor pay for a database round trip when nothing changed.
///
/// Writers call `forget(_:)` after their commit and before they answer, which also moves the generation on; a
/// reader that missed notes the generation before it reads the database and stores what it read only if no
/// write was forgotten meanwhile (`store(_:for:ifGeneration:)`), so a value read before a commit can never be
/// put back after that commit's `forget`. When full, an arbitrary entry makes room.
final class ReadCache<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private struct State {
        var entries: [Key: Value] = [:]
        var generation: UInt64 = 0
    }

    let capacity: Int
    private let state = NIOLockedValueBox(State())

    init(capacity: Int) {
        self.capacity = capacity
    }

    /// The cached value, or the generation to hand back to `store` with what the database says.
    func lookup(_ key: Key) -> (value: Value?, generation: UInt64) {
        state.withLockedValue { state in (state.entries[key], state.generation) }
    }

    func store(_ value: Value, for key: Key, ifGeneration generation: UInt64) {
        guard capacity > 0 else { return }
        state.withLockedValue { state in
            guard state.generation == generation else { return }
            if state.entries.count >= capacity, state.entries[key] == nil {
                state.entries.remove(at: state.entries.startIndex)
            }
            state.entries[key] = value
        }
    }

    /// Drops `key` after a write to it committed (or may have).
    func forget(_ key: Key) {
        state.withLockedValue { state in
            state.generation &+= 1
            state.entries[key] = nil
        }
    }

    var count: Int { state.withLockedValue { $0.entries.count } }
}
