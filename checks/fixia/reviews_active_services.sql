-- reviews point at services that exist and are active
SELECT r.id, r.service_id FROM reviews r LEFT JOIN services s ON s.id = r.service_id
WHERE s.id IS NULL OR NOT s.active
