//! The in-memory copy of every item and alert seq, with an undo log for passes.

use std::collections::{BTreeMap, HashMap};
use std::mem;

use super::types::Item;

/// One store's items and alert counter.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct StoreState {
    /// Items keyed by item code; each key equals its item's `item_code`.
    pub(super) items: BTreeMap<String, Item>,
    /// The seq of the store's newest alert; 0 before the first one.
    pub(super) last_seq: u64,
}

/// How to take back one change made to `Memory` during a pass.
///
/// Entries are undone newest first, so each one sees memory exactly as it
/// was right after the change it reverses.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Undo {
    /// The store state did not exist: remove it (and its tenant, if that
    /// leaves the tenant empty).
    StoreCreated {
        /// The tenant of the new store.
        tenant: String,
        /// The new store.
        store: String,
    },
    /// The item did not exist: remove it.
    ItemCreated {
        /// The tenant of the item's store.
        tenant: String,
        /// The item's store.
        store: String,
        /// The new item.
        item: String,
    },
    /// The item existed: put this previous value back.
    ItemChanged(Item),
    /// The store's alert seq was advanced: put this value back.
    SeqAdvanced {
        /// The tenant of the store.
        tenant: String,
        /// The store.
        store: String,
        /// `last_seq` before the change.
        previous: u64,
    },
}

/// Every item of every store, grouped by tenant then store.
///
/// Invariants: no tenant map is empty; `item_count` is the sum of the stores'
/// item counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Memory {
    /// Tenant id to store code to that store's state.
    tenants: HashMap<String, HashMap<String, StoreState>>,
    /// Items across all stores.
    item_count: usize,
}

impl Memory {
    /// The state of one store, if it has items or alerts.
    pub(super) fn state(&self, tenant: &str, store: &str) -> Option<&StoreState> {
        self.tenants.get(tenant)?.get(store)
    }

    /// One item, if it exists.
    pub(super) fn item(&self, tenant: &str, store: &str, item: &str) -> Option<&Item> {
        self.state(tenant, store)?.items.get(item)
    }

    /// The seq of the store's newest alert; 0 when it has none.
    pub(super) fn last_seq(&self, tenant: &str, store: &str) -> u64 {
        self.state(tenant, store).map_or(0, |state| state.last_seq)
    }

    /// Items across all stores.
    pub(super) fn item_count(&self) -> usize {
        self.item_count
    }

    /// Adds a whole store read at startup, replacing nothing.
    ///
    /// The caller passes each store once; `items` keys match item codes.
    pub(super) fn load_store(&mut self, tenant: String, store: String, state: StoreState) {
        self.item_count += state.items.len();
        let stores = self.tenants.entry(tenant).or_default();
        debug_assert!(!stores.contains_key(&store), "store loaded twice");
        stores.insert(store, state);
    }

    /// Sets a store's seq at startup, creating the store state if needed.
    pub(super) fn load_seq(&mut self, tenant: String, store: String, last_seq: u64) {
        let stores = self.tenants.entry(tenant).or_default();
        stores.entry(store).or_default().last_seq = last_seq;
    }

    /// Inserts or replaces `item`, logging how to undo it in `undo`.
    pub(super) fn put_item(&mut self, item: Item, undo: &mut Vec<Undo>) {
        let state = self.state_mut_or_create(&item.tenant_id, &item.store_code, undo);

        // Replace in place: no new key allocation for an existing item.
        if let Some(slot) = state.items.get_mut(&item.item_code) {
            undo.push(Undo::ItemChanged(mem::replace(slot, item)));
            return;
        }

        undo.push(Undo::ItemCreated {
            tenant: item.tenant_id.clone(),
            store: item.store_code.clone(),
            item: item.item_code.clone(),
        });
        state.items.insert(item.item_code.clone(), item);
        self.item_count += 1;
    }

    /// Sets a store's alert seq, logging how to undo it in `undo`.
    pub(super) fn set_last_seq(
        &mut self,
        tenant: &str,
        store: &str,
        last_seq: u64,
        undo: &mut Vec<Undo>,
    ) {
        let state = self.state_mut_or_create(tenant, store, undo);
        let previous = mem::replace(&mut state.last_seq, last_seq);
        undo.push(Undo::SeqAdvanced {
            tenant: tenant.to_owned(),
            store: store.to_owned(),
            previous,
        });
    }

    /// Takes back changes, which the caller yields newest first.
    pub(super) fn revert(&mut self, entries: impl Iterator<Item = Undo>) {
        for entry in entries {
            self.revert_one(entry);
        }
    }

    /// Takes back one change; memory must be as the change left it.
    fn revert_one(&mut self, entry: Undo) {
        match entry {
            Undo::StoreCreated { tenant, store } => {
                let Some(stores) = self.tenants.get_mut(&tenant) else {
                    debug_assert!(false, "undo of a store that is gone");
                    return;
                };
                let removed = stores.remove(&store);
                debug_assert!(removed.is_some_and(|state| state.items.is_empty()));
                if stores.is_empty() {
                    self.tenants.remove(&tenant);
                }
            }
            Undo::ItemCreated {
                tenant,
                store,
                item,
            } => {
                let removed = self
                    .tenants
                    .get_mut(&tenant)
                    .and_then(|stores| stores.get_mut(&store))
                    .and_then(|state| state.items.remove(&item));
                debug_assert!(removed.is_some(), "undo of an item that is gone");
                if removed.is_some() {
                    self.item_count -= 1;
                }
            }
            Undo::ItemChanged(previous) => {
                let slot = self
                    .tenants
                    .get_mut(&previous.tenant_id)
                    .and_then(|stores| stores.get_mut(&previous.store_code))
                    .and_then(|state| state.items.get_mut(&previous.item_code));
                debug_assert!(slot.is_some(), "undo of a change to an item that is gone");
                if let Some(slot) = slot {
                    *slot = previous;
                }
            }
            Undo::SeqAdvanced {
                tenant,
                store,
                previous,
            } => {
                let state = self
                    .tenants
                    .get_mut(&tenant)
                    .and_then(|stores| stores.get_mut(&store));
                debug_assert!(state.is_some(), "undo of a seq of a store that is gone");
                if let Some(state) = state {
                    state.last_seq = previous;
                }
            }
        }
    }

    /// The state of one store, created empty (and logged) when absent.
    fn state_mut_or_create(
        &mut self,
        tenant: &str,
        store: &str,
        undo: &mut Vec<Undo>,
    ) -> &mut StoreState {
        let exists = self.state(tenant, store).is_some();
        if !exists {
            undo.push(Undo::StoreCreated {
                tenant: tenant.to_owned(),
                store: store.to_owned(),
            });
        }
        let stores = self.tenants.entry(tenant.to_owned()).or_default();
        stores.entry(store.to_owned()).or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::Timestamp;

    fn item(tenant: &str, store: &str, code: &str, quantity: f64) -> Item {
        let mut item = Item::new(tenant, store, code, Timestamp(1));
        item.current_quantity = quantity;
        item
    }

    #[test]
    fn revert_restores_every_change_exactly() {
        let mut memory = Memory::default();
        let mut undo = Vec::new();
        memory.put_item(item("t", "s", "A", 5.0), &mut undo);
        memory.set_last_seq("t", "s", 3, &mut undo);
        undo.clear();
        let before = memory.clone();

        memory.put_item(item("t", "s", "A", 1.0), &mut undo);
        memory.put_item(item("t", "s", "B", 2.0), &mut undo);
        memory.put_item(item("t", "s2", "C", 2.0), &mut undo);
        memory.put_item(item("u", "s", "D", 2.0), &mut undo);
        memory.set_last_seq("t", "s", 4, &mut undo);
        memory.set_last_seq("v", "s", 1, &mut undo);
        memory.put_item(item("t", "s", "B", 7.0), &mut undo);
        assert_eq!(memory.item_count(), 4);

        memory.revert(undo.drain(..).rev());

        assert_eq!(memory, before);
        assert_eq!(memory.item_count(), 1);
        assert!(memory.state("u", "s").is_none());
        assert!(memory.state("v", "s").is_none());
    }

    #[test]
    fn partial_revert_keeps_older_changes() {
        let mut memory = Memory::default();
        let mut undo = Vec::new();
        memory.put_item(item("t", "s", "A", 5.0), &mut undo);
        let mark = undo.len();
        memory.put_item(item("t", "s", "A", 6.0), &mut undo);
        memory.put_item(item("t", "s", "B", 6.0), &mut undo);

        memory.revert(undo.drain(mark..).rev());

        assert_eq!(
            memory.item("t", "s", "A").map(|i| i.current_quantity),
            Some(5.0)
        );
        assert!(memory.item("t", "s", "B").is_none());
        assert_eq!(memory.item_count(), 1);
    }
}
