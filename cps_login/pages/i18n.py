"""Every text of the patient pages, in French (the default) and English — one catalogue.

Templates call ``t("key")`` (or ``t("key", name=...)`` for ``str.format`` fields); a test checks
that every key has both languages and that every key the templates use exists here. Access
rules (``rule.*``) and modes (``mode.*``) are named after ``cps_login.access``.
"""

from __future__ import annotations

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
    "history.filter.bad_date": {"fr": "Date invalide ignorée (format AAAA-MM-JJ).",
                                "en": "Invalid date ignored (format YYYY-MM-DD)."},
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
}


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
