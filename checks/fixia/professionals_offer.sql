-- services are offered by professionals, not by clients
SELECT s.id, s.professional_id, u.user_type FROM services s JOIN users u ON u.id = s.professional_id
WHERE u.user_type <> 'professional'
