-- a review's professional is the one who offers the reviewed service
SELECT r.id, r.service_id, r.professional_id, s.professional_id AS service_professional
FROM reviews r JOIN services s ON s.id = r.service_id WHERE r.professional_id <> s.professional_id
