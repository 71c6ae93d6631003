// Package identity groups visits of unknown people: an online Engine that
// assigns each visit to the nearest identity within a calibrated threshold (or
// to a new pending identity), a periodic consolidation that re-clusters the
// retention window while keeping identity ids stable, and batch clustering for
// folders of images.
//
// Distances are cosine distances (1 - dot) between L2-normalised embeddings.
// Each pair of visits has a type by mask state: UU (both unmasked), MM (both
// masked) or MU (mixed). Each type has its own threshold, taken from the model
// manifest; a pair matches when its distance is <= the threshold of its type.
// Distances are compared normalised, d/T, so a normalised distance <= 1 is a
// match. MaskUnknown counts as unmasked. An MU threshold of 0 or NaN disables
// matching across mask states: a sometimes-masked person may then count as two
// identities, but two people are never joined by weak evidence.
//
// The linkage between a visit (or cluster) and a cluster is the mean normalised
// distance over like-with-like pairs (UU and MM) when there are any, otherwise
// over MU pairs (when enabled). Online assignment and consolidation use the same
// linkage, so a consolidation never undoes a decision the online step would make
// again.
//
// Candidate search uses 512-bit sign sketches of a structured random rotation:
// the Hamming distance between sketches estimates the angle between
// embeddings, and only pairs whose sketch distance is within 4.5 standard
// deviations of the threshold angle are compared exactly. The prefilter can
// only miss matches (a split), never create one: every decision is taken on
// exact distances.
//
// For unit vectors the mean cosine distance to a set is 1 - dot(x, S)/n with
// S the set's sum, so online assignment scans one entry per identity and mask
// class (sketch of S, then dot(x, S)) and checks the few surviving
// identities member by member (centroid.go). Consolidation clusters each
// identity's visits exactly (complete linkage), then merges those groups
// across identities by average linkage computed from class sums
// (consolidate.go). ConsolidatePlan runs without the engine lock; ApplyPlan
// installs the result; Consolidate does both.
//
// An analyst corrects the grouping with Split and Merge (correct.go), and
// the caller keeps each correction as a Constraint (SetConstraints) that
// every later consolidation respects: the visits of a merge are one group
// from the first level on, and the second level never joins groups holding
// visits a split kept apart.
package identity
