import NIOConcurrencyHelpers

/// The values last read or written of up to `capacity` keys, for reads that must not wait behind the writer
/// nor pay for a database round trip when nothing changed.
///
/// Writers call `forget(_:)` after their commit and before they answer, which also moves the generation on; a
/// reader that missed notes the generation before it reads the database and stores what it read only if no
/// write was forgotten meanwhile (`store(_:for:ifGeneration:)`), so a value read before a commit can never be
/// put back after that commit's `forget`.
///
/// When full, the key stored longest ago makes room (first in, first out): each entry owns one slot of a ring of
/// `capacity` keys and a new key takes the slot under the hand, so eviction is O(1). (Removing the dictionary's
/// first entry instead made every lookup probe long runs of hash buckets once the cache had turned over: 13 % of
/// the service's time in `Dictionary.find` when a million sources were read at random.)
final class ReadCache<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private struct Entry {
        var value: Value
        var slot: Int
    }

    private struct State {
        var entries: [Key: Entry] = [:]
        /// The key that took each slot; a slot whose key was forgotten, or moved to another slot, is free.
        var ring: [Key?]
        var hand = 0
        var generation: UInt64 = 0
    }

    let capacity: Int
    private let state: NIOLockedValueBox<State>

    init(capacity: Int) {
        self.capacity = capacity
        // The ring grows with the cache (READ_CACHE_ENTRIES may be ten million; most of it may never be used).
        state = NIOLockedValueBox(State(ring: []))
    }

    /// The cached value, or the generation to hand back to `store` with what the database says.
    func lookup(_ key: Key) -> (value: Value?, generation: UInt64) {
        state.withLockedValue { state in (state.entries[key]?.value, state.generation) }
    }

    func store(_ value: Value, for key: Key, ifGeneration generation: UInt64) {
        guard capacity > 0 else { return }
        state.withLockedValue { state in
            guard state.generation == generation else { return }
            if state.entries[key] != nil {
                state.entries[key]?.value = value
                return
            }
            let slot: Int
            if state.ring.count < capacity {
                slot = state.ring.count
                state.ring.append(key)
            } else {
                slot = state.hand
                state.hand = (slot + 1) % capacity
                if let previous = state.ring[slot], state.entries[previous]?.slot == slot {
                    state.entries[previous] = nil
                }
                state.ring[slot] = key
            }
            state.entries[key] = Entry(value: value, slot: slot)
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
