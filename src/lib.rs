//! stockalert: keeps each item's stock level durably and pushes reorder-point and
//! minimum-stock alerts over WebSocket to every client of the item's store.
