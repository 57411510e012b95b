"""Every text of the patient pages, in French (the default) and English — one catalogue.

Templates call ``t("key")`` (or ``t("key", name=...)`` for ``str.format`` fields); a test checks
that every key has both languages and that every key the templates use exists here. Access
rules (``rule.*``) and modes (``mode.*``) are named after ``cps_login.access``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

LANGUAGES = ("fr", "en")
DEFAULT = "fr"

CATALOGUE: dict[str, dict[str, str]] = {
    # --- frame -------------------------------------------------------------------------
    "app.name": {"fr": "Mon espace santé", "en": "My health space"},
    "nav.skip": {"fr": "Aller au contenu", "en": "Skip to content"},
    "nav.main": {"fr": "Navigation principale", "en": "Main navigation"},
    "nav.history": {"fr": "Historique des accès", "en": "Access history"},
    "nav.controls": {"fr": "Confidentialité", "en": "Privacy controls"},
    "nav.profiles": {"fr": "Changer de profil", "en": "Switch profile"},
    "nav.signout": {"fr": "Se déconnecter", "en": "Sign out"},
    "nav.language": {"fr": "Langue", "en": "Language"},
    "lang.fr": {"fr": "Français", "en": "Français"},
    "lang.en": {"fr": "English", "en": "English"},
    "nav.viewing": {"fr": "Dossier de {name}", "en": "Record of {name}"},
    "nav.child_badge": {"fr": "profil enfant — vous agissez comme représentant légal",
                        "en": "child profile — you act as legal representative"},
    "footer.text": {"fr": "Chaque accès à votre dossier est enregistré dans un journal "
                          "infalsifiable, conservé dix ans.",
                    "en": "Every access to your record is written to a tamper-evident log "
                          "kept for ten years."},
    # --- sign-in -----------------------------------------------------------------------
    "signin.title": {"fr": "Connexion", "en": "Sign in"},
    "signin.intro": {"fr": "Connectez-vous avec votre INS, votre mot de passe et le code à "
                           "6 chiffres de votre application d'authentification.",
                     "en": "Sign in with your INS, your password and the 6-digit code of "
                           "your authenticator app."},
    "signin.ins": {"fr": "Identifiant national de santé (INS, 15 chiffres)",
                   "en": "National health identifier (INS, 15 digits)"},
    "signin.password": {"fr": "Mot de passe", "en": "Password"},
    "signin.totp": {"fr": "Code à usage unique (6 chiffres)",
                    "en": "One-time code (6 digits)"},
    "signin.submit": {"fr": "Se connecter", "en": "Sign in"},
    "signin.failed": {"fr": "Connexion impossible : INS, mot de passe ou code incorrect.",
                      "en": "Sign-in failed: wrong INS, password or code."},
    "signin.limited": {"fr": "Trop de tentatives. Réessayez dans {seconds} secondes.",
                       "en": "Too many attempts. Try again in {seconds} seconds."},
    "signin.expired": {"fr": "Votre session a expiré. Merci de vous reconnecter.",
                       "en": "Your session has expired. Please sign in again."},
    "signin.signed_out": {"fr": "Vous êtes déconnecté.", "en": "You are signed out."},
    # --- history -----------------------------------------------------------------------
    "history.title": {"fr": "Historique des accès", "en": "Access history"},
    "history.intro": {"fr": "Qui a consulté ce dossier, quand, quel document et dans quel "
                            "mode. Les accès en urgence sont signalés.",
                      "en": "Who opened this record, when, which document and in which "
                            "mode. Emergency accesses are highlighted."},
    "history.filters": {"fr": "Filtrer", "en": "Filter"},
    "history.filter.who": {"fr": "Professionnel", "en": "Professional"},
    "history.filter.all_pros": {"fr": "Tous les professionnels", "en": "All professionals"},
    "history.filter.everyone": {"fr": "Tout le monde (y compris vous)",
                                "en": "Everyone (including you)"},
    "history.filter.from": {"fr": "Du", "en": "From"},
    "history.filter.to": {"fr": "Au", "en": "To"},
    "history.filter.apply": {"fr": "Appliquer", "en": "Apply"},
    "history.filter.reset": {"fr": "Réinitialiser", "en": "Reset"},
    "history.filter.bad_date": {"fr": "Date invalide ignorée (format {format}).",
                                "en": "Invalid date ignored (format {format})."},
    "history.count": {"fr": "{count} accès affiché(s)", "en": "{count} access(es) shown"},
    "history.empty": {"fr": "Aucun accès pour ces critères.",
                      "en": "No access matches these filters."},
    "history.alerts": {"fr": "{count} accès en urgence à ce dossier",
                       "en": "{count} emergency access(es) to this record"},
    "history.when": {"fr": "Date", "en": "When"},
    "history.who": {"fr": "Qui", "en": "Who"},
    "history.document": {"fr": "Document", "en": "Document"},
    "history.no_document": {"fr": "Dossier (liste des documents)",
                            "en": "Record (document list)"},
    "history.document_unknown": {"fr": "Document n° {id}", "en": "Document no. {id}"},
    "history.reason": {"fr": "Motif déclaré : {reason}", "en": "Stated reason: {reason}"},
    "history.granted": {"fr": "Accès accordé", "en": "Access granted"},
    "history.refused": {"fr": "Accès refusé", "en": "Access refused"},
    "history.block": {"fr": "Bloquer ce professionnel", "en": "Block this professional"},
    "history.blocked": {"fr": "Bloqué", "en": "Blocked"},
    "history.you": {"fr": "Vous", "en": "You"},
    "action.read": {"fr": "a lu un document", "en": "read a document"},
    "action.list": {"fr": "a consulté la liste des documents", "en": "listed the documents"},
    "action.write": {"fr": "a ajouté un document", "en": "added a document"},
    "action.set_visibility": {"fr": "a changé la visibilité d'un document",
                              "en": "changed a document's visibility"},
    "action.history": {"fr": "a consulté l'historique", "en": "viewed the history"},
    "action.control": {"fr": "a modifié les réglages", "en": "changed the settings"},
    "mode.normal": {"fr": "Accès normal", "en": "Normal access"},
    "mode.break_glass": {"fr": "Accès d'urgence (bris de glace)",
                         "en": "Emergency access (break-glass)"},
    "mode.emergency": {"fr": "Accès par le centre de régulation (SAMU)",
                       "en": "Emergency call centre access"},
    # --- rules (why granted / refused) --------------------------------------------------
    "rule.care_team": {"fr": "membre de l'équipe de soins", "en": "member of the care team"},
    "rule.consent": {"fr": "avec votre consentement", "en": "with your consent"},
    "rule.break_glass": {"fr": "urgence déclarée", "en": "stated emergency"},
    "rule.emergency_centre": {"fr": "centre de régulation des urgences",
                              "en": "emergency call centre"},
    "rule.author": {"fr": "auteur du document", "en": "author of the document"},
    "rule.patient_self": {"fr": "vous-même", "en": "yourself"},
    "rule.legal_representative": {"fr": "représentant légal", "en": "legal representative"},
    "rule.patient_blocked": {"fr": "vous avez bloqué ce professionnel",
                             "en": "you blocked this professional"},
    "rule.hidden_by_patient": {"fr": "document masqué par vous",
                               "en": "document hidden by you"},
    "rule.no_care_relationship": {"fr": "hors équipe de soins, sans consentement",
                                  "en": "not in the care team, no consent"},
    "rule.profession_matrix": {"fr": "profession non autorisée pour ce type de document",
                               "en": "profession not allowed for this kind of document"},
    "rule.reason_required": {"fr": "urgence non motivée", "en": "no emergency stated"},
    "rule.emergency_opposed": {"fr": "vous vous êtes opposé aux accès d'urgence",
                               "en": "you opposed emergency access"},
    "rule.not_emergency_centre": {"fr": "pas un centre de régulation",
                                  "en": "not an emergency call centre"},
    "rule.other": {"fr": "règle d'accès : {rule}", "en": "access rule: {rule}"},
    # --- controls ----------------------------------------------------------------------
    "controls.title": {"fr": "Confidentialité et contrôle des accès",
                       "en": "Privacy and access controls"},
    "controls.emergency": {"fr": "Accès en urgence", "en": "Emergency access"},
    "controls.emergency.allowed": {
        "fr": "Les professionnels peuvent accéder à ce dossier en cas d'urgence (chaque accès "
              "vous est signalé).",
        "en": "Professionals may open this record in an emergency (you are told of each "
              "access)."},
    "controls.emergency.opposed": {
        "fr": "Vous vous opposez aux accès en urgence à ce dossier.",
        "en": "You oppose emergency access to this record."},
    "controls.oppose_emergency": {"fr": "M'opposer aux accès en urgence",
                                  "en": "Oppose emergency access"},
    "controls.allow_emergency": {"fr": "Autoriser les accès en urgence",
                                 "en": "Allow emergency access"},
    "controls.pros": {"fr": "Professionnels", "en": "Professionals"},
    "controls.pros.intro": {"fr": "Un professionnel bloqué ne peut plus ouvrir ce dossier, "
                                  "même en urgence.",
                            "en": "A blocked professional can no longer open this record, "
                                  "not even in an emergency."},
    "controls.care_team": {"fr": "Équipe de soins", "en": "Care team"},
    "controls.consents": {"fr": "Consentement donné", "en": "Consent given"},
    "controls.blocked": {"fr": "Professionnels bloqués", "en": "Blocked professionals"},
    "controls.none": {"fr": "Aucun.", "en": "None."},
    "controls.block": {"fr": "Bloquer", "en": "Block"},
    "controls.unblock": {"fr": "Débloquer", "en": "Unblock"},
    "controls.block_other": {"fr": "Bloquer un autre professionnel",
                             "en": "Block another professional"},
    "controls.national_id": {"fr": "Identifiant national du professionnel (8 + RPPS, "
                                   "12 chiffres)",
                             "en": "Professional's national identifier (8 + RPPS, "
                                   "12 digits)"},
    "controls.documents": {"fr": "Documents", "en": "Documents"},
    "controls.documents.intro": {
        "fr": "Un document masqué n'est plus visible que par son auteur.",
        "en": "A hidden document is visible to its author only."},
    "controls.no_documents": {"fr": "Aucun document.", "en": "No documents."},
    "controls.hidden": {"fr": "Masqué", "en": "Hidden"},
    "controls.visible": {"fr": "Visible", "en": "Visible"},
    "controls.hide": {"fr": "Masquer", "en": "Hide"},
    "controls.show": {"fr": "Rendre visible", "en": "Show"},
    "controls.document.col": {"fr": "Document", "en": "Document"},
    "controls.document.date": {"fr": "Date", "en": "Date"},
    "controls.document.state": {"fr": "Visibilité", "en": "Visibility"},
    "controls.document.action": {"fr": "Action", "en": "Action"},
    "done.block": {"fr": "Le professionnel est bloqué.", "en": "The professional is blocked."},
    "done.unblock": {"fr": "Le professionnel est débloqué.",
                     "en": "The professional is unblocked."},
    "done.hide_document": {"fr": "Le document est masqué.", "en": "The document is hidden."},
    "done.show_document": {"fr": "Le document est de nouveau visible.",
                           "en": "The document is visible again."},
    "done.oppose_emergency": {"fr": "Vous vous opposez désormais aux accès en urgence.",
                              "en": "You now oppose emergency access."},
    "done.allow_emergency": {"fr": "Les accès en urgence sont de nouveau autorisés.",
                             "en": "Emergency access is allowed again."},
    # --- profiles ----------------------------------------------------------------------
    "profiles.title": {"fr": "Changer de profil", "en": "Switch profile"},
    "profiles.intro": {"fr": "Vous pouvez gérer le dossier des enfants mineurs dont vous "
                             "êtes le représentant légal.",
                       "en": "You can manage the records of the minor children you are the "
                             "legal representative of."},
    "profiles.mine": {"fr": "Mon dossier", "en": "My record"},
    "profiles.child": {"fr": "Enfant (représentation légale)",
                       "en": "Child (legal representation)"},
    "profiles.current": {"fr": "profil affiché", "en": "current profile"},
    "profiles.open": {"fr": "Ouvrir le dossier de {name}", "en": "Open {name}'s record"},
    # --- errors ------------------------------------------------------------------------
    "error.title": {"fr": "Demande refusée", "en": "Request refused"},
    "error.forbidden": {"fr": "Vous n'avez pas accès à cette page. La tentative a été "
                              "enregistrée.",
                        "en": "You do not have access to this page. The attempt has been "
                              "recorded."},
    "error.not_found": {"fr": "Élément introuvable. La tentative a été enregistrée.",
                        "en": "Not found. The attempt has been recorded."},
    "error.csrf": {"fr": "Le formulaire a expiré ou n'est pas valide. Rechargez la page et "
                         "recommencez.",
                   "en": "The form has expired or is not valid. Reload the page and try "
                         "again."},
    "error.bad_request": {"fr": "Demande invalide.", "en": "Invalid request."},
    "error.back": {"fr": "Retour à l'accueil", "en": "Back to the start page"},
    "error.too_large": {"fr": "Le fichier est trop volumineux. Rien n'a été enregistré.",
                        "en": "The file is too large. Nothing was saved."},
    # --- patient space: frame, dates, shared texts -----------------------------------------
    "nav.documents": {"fr": "Documents", "en": "Documents"},
    "nav.health": {"fr": "Mes données de santé", "en": "My health data"},
    "nav.messages": {"fr": "Messagerie", "en": "Messages"},
    "nav.shares": {"fr": "Partages", "en": "Sharing"},
    "date.format": {"fr": "jj/mm/aaaa", "en": "yyyy-mm-dd"},
    "date.invalid": {"fr": "date invalide (format {format})",
                     "en": "invalid date (format {format})"},
    "space.invalid": {"fr": "Refusé, rien n'a été enregistré : {detail}",
                      "en": "Refused, nothing was saved: {detail}"},
    # --- documents ---------------------------------------------------------------------
    "documents.title": {"fr": "Documents", "en": "Documents"},
    "documents.intro": {"fr": "Les documents de vos professionnels et ceux que vous avez "
                              "ajoutés. Chaque lecture et chaque téléchargement est enregistré "
                              "dans l'historique des accès.",
                        "en": "Your professionals' documents and the ones you added. Every "
                              "view and download is written to the access history."},
    "documents.from_pros": {"fr": "Documents de vos professionnels",
                            "en": "Documents from your professionals"},
    "documents.mine": {"fr": "Mes documents", "en": "My documents"},
    "documents.none_mine": {"fr": "Vous n'avez ajouté aucun document.",
                            "en": "You have not added any document."},
    "documents.visibility": {"fr": "Qui le voit", "en": "Who sees it"},
    "documents.file": {"fr": "Fichier", "en": "File"},
    "documents.kb": {"fr": "Ko", "en": "KB"},
    "documents.written_by_you": {"fr": "ajouté par le patient", "en": "added by the patient"},
    "documents.hide_all": {"fr": "Masquer à tous", "en": "Hide from everyone"},
    "documents.hide_from": {"fr": "Masquer à", "en": "Hide from"},
    "documents.hide_from.submit": {"fr": "Masquer à ce professionnel",
                                   "en": "Hide from this professional"},
    "documents.hidden_from": {"fr": "Masqué à {name}.", "en": "Hidden from {name}."},
    "documents.add": {"fr": "Ajouter un document", "en": "Add a document"},
    "documents.add.intro": {"fr": "PDF, PNG ou JPEG, {mb} Mo au plus. Le contenu du fichier "
                                  "est vérifié.",
                            "en": "PDF, PNG or JPEG, at most {mb} MB. The file's content is "
                                  "checked."},
    "documents.add.title": {"fr": "Titre du document", "en": "Document title"},
    "documents.add.file": {"fr": "Fichier (PDF, PNG, JPEG)", "en": "File (PDF, PNG, JPEG)"},
    "documents.add.submit": {"fr": "Ajouter le document", "en": "Add the document"},
    "documents.no_file": {"fr": "aucun fichier choisi", "en": "no file chosen"},
    "documents.unknown_pro": {"fr": "aucun professionnel avec cet identifiant national",
                              "en": "no professional with this national id"},
    "documents.back": {"fr": "← Retour aux documents", "en": "← Back to the documents"},
    "documents.by": {"fr": "Par {author}, le {date}", "en": "By {author}, {date}"},
    "documents.content": {"fr": "Contenu du document", "en": "Document content"},
    "documents.open_pdf": {"fr": "Ouvrir le PDF", "en": "Open the PDF"},
    "documents.download": {"fr": "Télécharger", "en": "Download"},
    "documents.read_logged": {"fr": "Cette lecture est enregistrée dans l'historique des "
                                    "accès.",
                              "en": "This view is written to the access history."},
    "done.uploaded": {"fr": "Le document est ajouté.", "en": "The document is added."},
    "done.hidden": {"fr": "Le document est masqué.", "en": "The document is hidden."},
    "done.shown": {"fr": "Le document est de nouveau visible.",
                   "en": "The document is visible again."},
    # --- health data -------------------------------------------------------------------
    "health.title": {"fr": "Mes données de santé", "en": "My health data"},
    "health.intro": {"fr": "Allergies, vaccinations et mesures que vous saisissez : elles "
                           "sont marquées comme écrites par vous et visibles des "
                           "professionnels autorisés à lire votre dossier.",
                     "en": "Allergies, vaccinations and measures you enter: they are marked "
                           "as written by you and visible to the professionals allowed to "
                           "read your record."},
    "health.allergies": {"fr": "Allergies", "en": "Allergies"},
    "health.vaccinations": {"fr": "Vaccinations", "en": "Vaccinations"},
    "health.measures": {"fr": "Mesures", "en": "Measures"},
    "health.none": {"fr": "Rien de saisi.", "en": "Nothing entered."},
    "health.date": {"fr": "Date", "en": "Date"},
    "health.note": {"fr": "Précisions (réaction…)", "en": "Details (reaction…)"},
    "health.allergy.name": {"fr": "Substance", "en": "Substance"},
    "health.allergy.add": {"fr": "Ajouter l'allergie", "en": "Add the allergy"},
    "health.vaccine.name": {"fr": "Vaccin", "en": "Vaccine"},
    "health.vaccine.lot": {"fr": "Numéro de lot (facultatif)", "en": "Batch number (optional)"},
    "health.vaccine.add": {"fr": "Ajouter la vaccination", "en": "Add the vaccination"},
    "health.measure": {"fr": "Mesure", "en": "Measure"},
    "health.value": {"fr": "Valeur", "en": "Value"},
    "health.value2": {"fr": "Seconde valeur (tension : diastolique)",
                      "en": "Second value (blood pressure: diastolic)"},
    "health.two_values": {"fr": "deux valeurs", "en": "two values"},
    "health.measure.add": {"fr": "Ajouter la mesure", "en": "Add the measure"},
    "health.not_a_number": {"fr": "{field} n'est pas un nombre",
                            "en": "{field} is not a number"},
    "done.health": {"fr": "C'est enregistré.", "en": "Saved."},
    # --- messages ----------------------------------------------------------------------
    "messages.title": {"fr": "Messagerie sécurisée", "en": "Secure messages"},
    "messages.intro": {"fr": "Seul un professionnel de votre équipe de soins peut ouvrir une "
                             "conversation ; vous pouvez y répondre. Les messages sont "
                             "chiffrés.",
                       "en": "Only a professional of your care team can open a conversation; "
                             "you can reply. Messages are encrypted."},
    "messages.none": {"fr": "Aucune conversation.", "en": "No conversation."},
    "messages.opened_by": {"fr": "Ouverte par {name} le {date}",
                           "en": "Opened by {name} on {date}"},
    "messages.attachment": {"fr": "Pièce jointe : {name}", "en": "Attachment: {name}"},
    "messages.reply": {"fr": "Votre réponse", "en": "Your reply"},
    "messages.attach": {"fr": "Pièce jointe (PDF, PNG, JPEG, {kb} Ko au plus)",
                        "en": "Attachment (PDF, PNG, JPEG, at most {kb} KB)"},
    "messages.send": {"fr": "Envoyer", "en": "Send"},
    "done.replied": {"fr": "Votre message est envoyé.", "en": "Your message is sent."},
    # --- shares ------------------------------------------------------------------------
    "shares.title": {"fr": "Partager mon profil", "en": "Share my profile"},
    "shares.intro": {"fr": "Partagez un résumé de votre profil (identité, allergies, "
                           "vaccinations, dernières mesures, titres de vos documents) avec "
                           "le professionnel de votre choix, pour une durée que vous fixez. "
                           "Chaque consultation est enregistrée.",
                     "en": "Share a summary of your profile (identity, allergies, "
                           "vaccinations, latest measures, your documents' titles) with the "
                           "professional you choose, for as long as you decide. Every use is "
                           "recorded."},
    "shares.new": {"fr": "Nouveau partage", "en": "New share"},
    "shares.duration": {"fr": "Durée", "en": "For"},
    "shares.days": {"fr": "{days} jour(s)", "en": "{days} day(s)"},
    "shares.submit": {"fr": "Partager", "en": "Share"},
    "shares.list": {"fr": "Mes partages", "en": "My shares"},
    "shares.none": {"fr": "Aucun partage.", "en": "No share."},
    "shares.until": {"fr": "jusqu'au {date}", "en": "until {date}"},
    "shares.revoked": {"fr": "révoqué le {date}", "en": "revoked on {date}"},
    "shares.expired": {"fr": "expiré le {date}", "en": "expired on {date}"},
    "shares.revoke": {"fr": "Révoquer", "en": "Revoke"},
    "shares.uses": {"fr": "Consultations du résumé", "en": "Uses of the summary"},
    "shares.no_use": {"fr": "Personne n'a encore consulté votre résumé.",
                      "en": "Nobody has used your summary yet."},
    "shares.bad_days": {"fr": "la durée doit aller de 1 à {max} jours",
                        "en": "the duration must be 1 to {max} days"},
    "done.shared": {"fr": "Votre résumé est partagé.", "en": "Your summary is shared."},
    "done.revoked": {"fr": "Le partage est révoqué.", "en": "The share is revoked."},
    # --- why input was refused (cps_login.patient_space.REFUSALS) ---------------------------
    "field.subject": {"fr": "le sujet", "en": "the subject"},
    "field.message": {"fr": "le message", "en": "the message"},
    "field.title": {"fr": "le titre", "en": "the title"},
    "field.note": {"fr": "la précision", "en": "the note"},
    "field.allergy": {"fr": "la substance", "en": "the substance"},
    "field.vaccine": {"fr": "le vaccin", "en": "the vaccine"},
    "field.diastolic": {"fr": "diastolique", "en": "diastolic"},
    "invalid.file_empty": {"fr": "le fichier est vide", "en": "the file is empty"},
    "invalid.file_too_large": {"fr": "le fichier est trop volumineux : {size} octets, {max} au "
                                     "plus",
                               "en": "the file is too large: {size} bytes, at most {max}"},
    "invalid.file_type": {"fr": "seuls les fichiers PDF, PNG et JPEG sont acceptés ; ce fichier "
                                "n'en est pas un",
                          "en": "only PDF, PNG and JPEG files are accepted; this file is none "
                                "of them"},
    "invalid.file_disguised": {"fr": "le fichier s'appelle « {name} » mais son contenu est "
                                     "{type}",
                               "en": "the file is named '{name}' but its content is {type}"},
    "invalid.pdf_truncated": {"fr": "le PDF est tronqué (pas de marque de fin)",
                              "en": "the PDF is truncated (no end-of-file marker)"},
    "invalid.pdf_active": {"fr": "le PDF contient du contenu actif ({what}) ; imprimez-le en "
                                 "PDF simple d'abord",
                           "en": "the PDF contains active content ({what}); print it to a "
                                 "plain PDF first"},
    "invalid.pdf_unreadable": {"fr": "le PDF est illisible ({detail})",
                               "en": "the PDF cannot be read ({detail})"},
    "invalid.pdf_no_page": {"fr": "le PDF n'a aucune page", "en": "the PDF has no page"},
    "invalid.pdf_busy": {"fr": "le serveur vérifie d'autres fichiers PDF ; réessayez dans une "
                               "minute",
                         "en": "the server is checking other PDF files; try again in a minute"},
    "invalid.image_too_large": {"fr": "l'image est trop grande : {width}x{height} pixels",
                                "en": "the image is too large: {width}x{height} pixels"},
    "invalid.image_unreadable": {"fr": "l'image est illisible ({detail})",
                                 "en": "the image cannot be read ({detail})"},
    "invalid.image_mismatch": {"fr": "le contenu de l'image ({format}) ne correspond pas à son "
                                     "type",
                               "en": "the image's content ({format}) does not match its type"},
    "invalid.required": {"fr": "{field} est obligatoire", "en": "{field} is required"},
    "invalid.too_long": {"fr": "{field} est trop long : {length} caractères, {max} au plus",
                         "en": "{field} is too long: {length} characters, at most {max}"},
    "invalid.health_kind": {"fr": "type de donnée inconnu (attendu : {kinds})",
                            "en": "kind must be one of {kinds}"},
    "invalid.date_future": {"fr": "la date est dans le futur", "en": "the date is in the future"},
    "invalid.date_too_old": {"fr": "la date est antérieure à 1900",
                             "en": "the date is before 1900"},
    "invalid.measure_unknown": {"fr": "mesure inconnue « {name} » (connues : {known})",
                                "en": "unknown measure '{name}'; known: {known}"},
    "invalid.measure_value": {"fr": "{name} : une valeur en {unit} est nécessaire",
                              "en": "a {name} needs a value in {unit}"},
    "invalid.measure_range": {"fr": "{name} {value} {unit} est hors de l'intervalle plausible "
                                    "{min}–{max} {unit}",
                              "en": "{name} {value} {unit} is outside the plausible range "
                                    "{min}–{max} {unit}"},
    "invalid.measure_two": {"fr": "{name} : deux valeurs sont nécessaires "
                                  "(systolique/diastolique)",
                            "en": "a {name} needs two values (systolic/diastolic)"},
    "invalid.diastolic_below": {"fr": "la pression diastolique doit être inférieure à la "
                                      "systolique",
                                "en": "the diastolic pressure must be below the systolic"},
    "invalid.share_days": {"fr": "un partage dure de 1 à {max} jours, pas {days}",
                           "en": "a share lasts 1 to {max} days, not {days}"},
    "invalid.document_kind": {"fr": "type de document inconnu", "en": "unknown kind of document"},
    "invalid.upload_quota": {"fr": "le dossier contient déjà {count} documents du patient : la "
                                   "limite est atteinte ({mb} Mo au plus en tout)",
                             "en": "the record already holds {count} of the patient's "
                                   "documents: the limit is reached ({mb} MB at most in all)"},
    # --- consent (controls) ------------------------------------------------------------
    "controls.consent.intro": {"fr": "Un professionnel hors de votre équipe de soins peut "
                                     "lire votre dossier si vous y consentez.",
                               "en": "A professional outside your care team may read your "
                                     "record if you consent."},
    "controls.give_consent": {"fr": "Donner mon consentement",
                              "en": "Give my consent"},
    "controls.withdraw_consent": {"fr": "Retirer mon consentement",
                                  "en": "Withdraw my consent"},
    "done.consent": {"fr": "Votre consentement est enregistré.",
                     "en": "Your consent is recorded."},
    "done.withdraw_consent": {"fr": "Votre consentement est retiré.",
                              "en": "Your consent is withdrawn."},
    # --- new actions and rules in the history ---------------------------------------------
    "action.open_conversation": {"fr": "a ouvert une conversation",
                                 "en": "opened a conversation"},
    "action.send_message": {"fr": "a écrit un message", "en": "wrote a message"},
    "action.read_messages": {"fr": "a lu la messagerie", "en": "read the messages"},
    "action.list_uploads": {"fr": "a consulté vos documents", "en": "listed your documents"},
    "action.read_upload": {"fr": "a lu votre document", "en": "read your document"},
    "action.read_health": {"fr": "a lu vos données de santé", "en": "read your health data"},
    "action.read_summary": {"fr": "a consulté votre résumé partagé",
                            "en": "used your shared summary"},
    "action.contribute": {"fr": "a ajouté du contenu", "en": "added content"},
    "action.share": {"fr": "a géré les partages", "en": "managed the shares"},
    "action.view": {"fr": "a lu un document", "en": "viewed a document"},
    "action.download": {"fr": "a téléchargé un document", "en": "downloaded a document"},
    "rule.not_care_team": {"fr": "hors équipe de soins", "en": "not in the care team"},
    "rule.hidden_from_professional": {"fr": "document que vous lui avez masqué",
                                      "en": "document you hid from them"},
    "rule.shared_summary": {"fr": "résumé partagé par vous", "en": "summary you shared"},
    "rule.not_shared": {"fr": "aucun partage en cours", "en": "no current share"},
    "rule.mode_not_allowed": {"fr": "mode d'accès non permis", "en": "access mode not allowed"},
}


def parse_date(raw: str) -> dt.date:
    """A date typed in a page: ``dd/mm/yyyy`` (what French pages show) or ``yyyy-mm-dd``
    (English pages, links); ValueError otherwise."""
    text = raw.strip()
    if "/" in text:
        parts = text.split("/")
        if len(parts) != 3 or not all(p.isdigit() for p in parts) or len(parts[2]) != 4:
            raise ValueError(f"not dd/mm/yyyy: {text!r}")
        return dt.date(int(parts[2]), int(parts[1]), int(parts[0]))
    return dt.date.fromisoformat(text)


def show_date(day: dt.date, lang: str) -> str:
    """A date as a page in ``lang`` shows it and its date fields take it."""
    return day.strftime("%d/%m/%Y") if lang == "fr" else day.isoformat()


def translate(lang: str, key: str, **fields: object) -> str:
    """The text of ``key`` in ``lang`` (French if missing); ``fields`` fill ``{name}``s."""
    entry = CATALOGUE[key]
    text = entry.get(lang) or entry[DEFAULT]
    return text.format(**fields) if fields else text


def negotiate(accepted: Iterable[tuple[str, float]], chosen: str | None) -> str:
    """The page language: an explicit choice, else the best of Accept-Language, else French."""
    if chosen in LANGUAGES:
        return str(chosen)
    best: tuple[float, str] | None = None
    for value, quality in accepted:
        primary = value.split("-")[0].lower()
        if primary in LANGUAGES and quality > 0 and (best is None or quality > best[0]):
            best = (quality, primary)
    return best[1] if best else DEFAULT
