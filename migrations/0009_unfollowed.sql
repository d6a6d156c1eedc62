-- --standby N: a partition this file no longer keeps up to date (another host owns it, and
-- the group gave this host other partitions to follow) says so: its positions row's owner is
-- 'unfollowed' and progress.role 'unfollowed'. Its rows stay as of the position it shows.
-- Only the view changes: the same columns, one role more.

DROP VIEW progress;
CREATE VIEW progress (
    topic, partition, next_offset, log_end_offset, lag, owner, updated_at, role, changelog_lag,
    start_from, start_offset
) AS
    SELECT p.topic, p.partition, p.next_offset, p.log_end_offset,
           max(p.log_end_offset - p.next_offset, 0) AS lag, p.owner, p.updated_at,
           CASE WHEN c.topic IS NULL THEN NULL
                WHEN p.owner = 'standby' THEN 'follows'
                WHEN p.owner = 'unfollowed' THEN 'unfollowed'
                ELSE 'owns' END AS role,
           max(c.log_end_offset - c.next_offset, 0) AS changelog_lag,
           p.start_from, p.start_offset
    FROM positions AS p LEFT JOIN changelog_offsets AS c USING (topic, partition);
