-- The patients an import created are paged through in id order when the import is
-- rolled back (`... WHERE import_operation_id = $2 AND id > $3 ORDER BY id LIMIT n`).
-- On (import_operation_id) alone that order is not in the index: after an update and
-- a delete churned the table, PostgreSQL planned pages of a 2,000,000-row rollback as
-- "every patient of the import, then sort" (2 s a page, BENCHMARKS.md). With the id in
-- the index each page is one range of it, whatever the statistics say.
DROP INDEX patients_import;
CREATE INDEX patients_import ON patients (import_operation_id, id) WHERE import_operation_id IS NOT NULL;
