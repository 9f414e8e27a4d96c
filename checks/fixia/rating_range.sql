-- every review is rated from 1 to 5
SELECT id, service_id, rating FROM reviews WHERE rating NOT BETWEEN 1 AND 5
