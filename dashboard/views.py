"""The dashboard's pages. Thin: check the form, call the same services and selectors as the REST API,
render. Every page goes through dashboard_view (login, membership, role); every POST needs the
permission the REST API asks for the same change."""

import csv
import math
from urllib.parse import urlencode

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.core.paginator import Paginator
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from accounts import selectors as account_selectors
from accounts import services as account_services
from accounts.login_throttle import client_address, login_locked_for
from accounts.permissions import SESSION_ORGANIZATION_KEY
from accounts.roles import SUPERUSER_PERMISSION, Perm, Role
from dashboard import forms
from dashboard import selectors as dashboard_selectors
from dashboard.access import SERVICE_ERRORS, audit_of, dashboard_view, error_text
from tokens import relay
from tokens import selectors as token_selectors
from tokens import services as token_services
from tokens.policy import ErrorType, Status

FAILED = object()


def attempt(request, call, success: str | None = None):
    """Run a service call; its refusal becomes an error message on the page (and FAILED)."""
    try:
        result = call()
    except SERVICE_ERRORS as exc:
        messages.error(request, error_text(exc))
        return FAILED
    if success:
        messages.success(request, success)
    return result


def back(request, default: str):
    """Where a form came from (its `next`), when that is one of our own pages."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return redirect(target)
    return redirect(default)


def no_store(response):
    """A page that shows a secret once: no cache keeps it."""
    response["Cache-Control"] = "no-store"
    return response


# --- Sessions -------------------------------------------------------------------------------------


class LoginView(auth_views.LoginView):
    """Django's login. The throttle (accounts.login_throttle) counts and refuses every login, this one
    included; this page only says so plainly: 429 with the wait, instead of the form's usual error."""

    template_name = "dashboard/login.html"
    redirect_authenticated_user = True

    def post(self, request, *args, **kwargs):
        username = request.POST.get("username", "")
        wait = login_locked_for(username=username, ip=client_address(request))
        if wait:
            # An unbound form: binding it would check the password, which a locked login must not do.
            form = self.get_form_class()(request, initial={"username": username[:150]})
            response = self.render_to_response(self.get_context_data(form=form, locked_minutes=math.ceil(wait / 60)))
            response.status_code = 429
            response["Retry-After"] = str(wait)
            return response
        return super().post(request, *args, **kwargs)


def front(request):
    """The front page: the login form for strangers, the overview for members."""
    if not request.user.is_authenticated:
        return LoginView.as_view()(request)
    return overview(request)


class PasswordChangeView(auth_views.PasswordChangeView):
    template_name = "dashboard/password_change.html"
    success_url = reverse_lazy("dashboard:overview")

    def form_valid(self, form):
        messages.success(self.request, "Your password was changed.")
        return super().form_valid(form)


@require_POST
def organization_switch(request):
    if not request.user.is_authenticated:
        return redirect("dashboard:login")
    chosen_id = request.POST.get("organization", "")
    memberships = account_selectors.active_memberships_of(request.user)
    chosen = memberships.filter(organization_id=int(chosen_id)).first() if chosen_id.isdigit() and len(chosen_id) < 19 else None
    if chosen is None:
        messages.error(request, "You are not an active member of that organization.")
    else:
        request.session[SESSION_ORGANIZATION_KEY] = chosen.organization_id
        messages.success(request, f"Now working in {chosen.organization.name}.")
    return redirect("dashboard:overview")


# --- Overview -------------------------------------------------------------------------------------


@dashboard_view()
def overview(request):
    organization = request.viewer.organization
    pools = dashboard_selectors.pool_overview(organization)
    return render(
        request,
        "dashboard/overview.html",
        {
            "pools": pools,
            "charts": {str(p["pool"].pk): p["chart"] for p in pools},
            "soonest_return": dashboard_selectors.soonest_return(organization),
            "now": timezone.now(),
        },
    )


# --- Tokens ---------------------------------------------------------------------------------------

TOKEN_PAGE_SIZE = 100


@dashboard_view(Perm.VIEW_TOKENS)
def tokens(request):
    organization = request.viewer.organization
    pool = request.GET.get("pool", "")[:64]
    status = request.GET.get("status", "")
    status = status if status in dict(Status.CHOICES) else ""
    page = Paginator(token_selectors.token_list(organization, pool=pool, status=status), TOKEN_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    manage = request.viewer.may(Perm.MANAGE_TOKENS)
    return render(
        request,
        "dashboard/tokens.html",
        {
            "page": page,
            "pools": token_selectors.pool_list(organization).order_by("name"),
            "statuses": [s for s, _ in Status.CHOICES],
            "filters": {"pool": pool, "status": status},
            "filter_query": urlencode({k: v for k, v in {"pool": pool, "status": status}.items() if v}),
            "add_form": forms.TokenAddForm(organization=organization) if manage else None,
            "import_form": forms.TokenImportForm(organization=organization) if manage else None,
            "timed": Status.TIMED,
        },
    )


@require_POST
@dashboard_view(Perm.MANAGE_TOKENS)
def token_add(request):
    organization = request.viewer.organization
    form = forms.TokenAddForm(request.POST, organization=organization)
    if not form.is_valid():
        return _form_errors(request, form, "dashboard:tokens")
    data = form.cleaned_data
    token = attempt(
        request,
        lambda: token_services.token_add(
            organization=organization,
            pool=token_selectors.pool_by_name(organization, data["pool"]),
            secret=data["token"],
            label=data["label"],
            weight=data["weight"],
            max_concurrent_leases=data["max_concurrent_leases"],
            **audit_of(request),
        ),
    )
    if token is not FAILED:
        messages.success(request, f"Added {token}.")
        if data["validate"]:
            validated = attempt(request, lambda: token_services.token_validate(token=token, **audit_of(request)))
            if validated is not FAILED:
                messages.info(request, f"Hugging Face says: {validated.status}.")
    return redirect("dashboard:tokens")


@require_POST
@dashboard_view(Perm.MANAGE_TOKENS)
def token_import(request):
    organization = request.viewer.organization
    form = forms.TokenImportForm(request.POST, organization=organization)
    if not form.is_valid():
        return _form_errors(request, form, "dashboard:tokens")
    data = form.cleaned_data
    result = attempt(
        request,
        lambda: token_services.tokens_import(
            organization=organization,
            pool=token_selectors.pool_by_name(organization, data["pool"]),
            secrets=data["text"],
            label_prefix=data["label_prefix"],
            **audit_of(request),
        ),
    )
    if result is not FAILED:
        text = f"Imported {len(result.added)} token(s)."
        if result.duplicates:
            text += f" Already present: {', '.join('…' + d for d in result.duplicates[:20])}."
        messages.success(request, text)
    return redirect("dashboard:tokens")


@dashboard_view(Perm.VIEW_TOKENS, post_perm=Perm.MANAGE_TOKENS)
def token_detail(request, token_id: int):
    organization = request.viewer.organization
    token = token_selectors.token_get(organization, token_id)
    current = {"label": token.label, "weight": token.weight, "max_concurrent_leases": token.max_concurrent_leases}
    form = forms.TokenUpdateForm(request.POST if request.method == "POST" else None, initial=current)
    if request.method == "POST" and form.is_valid():
        changed = {name: form.cleaned_data[name] for name in form.changed_data}
        if changed:
            attempt(
                request, lambda: token_services.token_update(token=token, **changed, **audit_of(request)), success="Saved."
            )
        return redirect("dashboard:token-detail", token_id=token.pk)
    return render(
        request,
        "dashboard/token_detail.html",
        {
            "token": token,
            "events": token_selectors.token_events(organization, token, limit=200),
            "form": form if request.viewer.may(Perm.MANAGE_TOKENS) else None,
            "timed": Status.TIMED,
        },
        status=400 if form.errors else 200,
    )


TOKEN_ACTIONS = {
    "validate": (token_services.token_validate, "Validated {token}: {status}."),
    "enable": (token_services.token_enable, "Enabled {token}."),
    "disable": (token_services.token_disable, "Disabled {token}."),
    "release": (token_services.token_release, "Released {token}."),
}


@require_POST
@dashboard_view(Perm.MANAGE_TOKENS)
def token_action(request, token_id: int, action: str):
    token = token_selectors.token_get(request.viewer.organization, token_id)
    if action == "delete":
        attempt(request, lambda: token_services.token_delete(token=token, **audit_of(request)), success=f"Deleted {token}.")
        return back(request, reverse("dashboard:tokens"))
    service, text = TOKEN_ACTIONS[action]
    result = attempt(request, lambda: service(token=token, **audit_of(request)))
    if result is not FAILED:
        messages.success(request, text.format(token=result, status=result.status))
    return back(request, reverse("dashboard:tokens"))


def _form_errors(request, form, default: str):
    for field, errors in form.errors.items():
        label = form.fields[field].label or field.replace("_", " ") if field in form.fields else ""
        for error in errors:
            messages.error(request, f"{label.capitalize()}: {error}" if label else error)
    return back(request, reverse(default))


# --- Pools ----------------------------------------------------------------------------------------


@dashboard_view(Perm.VIEW_TOKENS, post_perm=Perm.MANAGE_POOLS)
def pools(request):
    organization = request.viewer.organization
    create_form = forms.PoolForm(prefix="new")
    if request.method == "POST":
        create_form = forms.PoolForm(request.POST, prefix="new")
        if create_form.is_valid():
            pool = attempt(
                request,
                lambda: token_services.pool_create(
                    organization=organization, **create_form.cleaned_data, **audit_of(request)
                ),
            )
            if pool is not FAILED:
                messages.success(request, f"Created pool {pool.name}.")
                return redirect("dashboard:pools")
    return _render_pools(request, create_form=create_form)


def _render_pools(request, *, create_form=None, edited=None):
    manage = request.viewer.may(Perm.MANAGE_POOLS)
    rows = []
    for pool in token_selectors.pool_list(request.viewer.organization).order_by("name"):
        form = edited if edited is not None and edited.prefix == f"pool-{pool.pk}" else forms.PoolForm.for_pool(pool)
        rows.append({"pool": pool, "form": form if manage else None})
    status = 400 if (create_form is not None and create_form.errors) or (edited is not None and edited.errors) else 200
    return render(
        request,
        "dashboard/pools.html",
        {"rows": rows, "create_form": create_form if manage else None},
        status=status,
    )


@require_POST
@dashboard_view(Perm.MANAGE_POOLS)
def pool_edit(request, pool_id: int):
    pool = token_selectors.pool_get(request.viewer.organization, pool_id)
    form = forms.PoolForm.for_pool(pool, request.POST)
    if not form.is_valid():
        return _render_pools(request, create_form=forms.PoolForm(prefix="new"), edited=form)
    changed = form.changed_fields()
    if changed:
        attempt(
            request,
            lambda: token_services.pool_update(pool=pool, **changed, **audit_of(request)),
            success=f"Saved pool {pool.name}.",
        )
    return redirect("dashboard:pools")


@require_POST
@dashboard_view(Perm.MANAGE_POOLS)
def pool_delete(request, pool_id: int):
    pool = token_selectors.pool_get(request.viewer.organization, pool_id)
    name = pool.name
    attempt(request, lambda: token_services.pool_delete(pool=pool, **audit_of(request)), success=f"Deleted pool {name}.")
    return redirect("dashboard:pools")


# --- Users ----------------------------------------------------------------------------------------


@dashboard_view(Perm.MANAGE_USERS)
def users(request):
    organization = request.viewer.organization
    form = forms.UserCreateForm()
    created = None
    if request.method == "POST":
        form = forms.UserCreateForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            result = attempt(
                request,
                lambda: account_services.user_create(
                    organization=organization,
                    username=data["username"],
                    email=data["email"],
                    full_name=data["full_name"],
                    role=data["role"],
                    password=data["password"] or None,
                    **audit_of(request),
                ),
            )
            if result is not FAILED:
                membership, raw_key = result
                created = {"username": membership.user.username, "api_key": raw_key}
                form = forms.UserCreateForm()
    memberships = list(account_selectors.membership_list(organization))
    response = render(
        request,
        "dashboard/users.html",
        {
            "memberships": memberships,
            "manageable": {m.user_id for m in memberships if account_selectors.may_manage_account(request.user, m.user)},
            "form": form,
            "created": created,
            "roles": Role.choices,
        },
        status=400 if form.errors else 200,
    )
    return no_store(response) if created else response


@require_POST
@dashboard_view(Perm.MANAGE_USERS)
def user_change(request, user_id: int, change: str):
    membership = account_selectors.membership_to_manage(request.viewer.organization, user_id, actor=request.user)
    name = membership.user.username
    if change == "role":
        form = forms.RoleForm(request.POST)
        if not form.is_valid():
            return _form_errors(request, form, "dashboard:users")
        role = form.cleaned_data["role"]
        call, text = (
            lambda: account_services.user_update(membership=membership, role=role, **audit_of(request)),
            f"{name} is now {role}.",
        )
    elif change == "deactivate":
        call, text = (
            lambda: account_services.user_deactivate(membership=membership, **audit_of(request)),
            f"Deactivated {name}; their keys no longer work.",
        )
    else:  # reactivate
        call, text = (
            lambda: account_services.user_update(membership=membership, is_active=True, **audit_of(request)),
            f"Reactivated {name}.",
        )
    attempt(request, call, success=text)
    return redirect("dashboard:users")


# --- API keys -------------------------------------------------------------------------------------


@dashboard_view(Perm.MANAGE_OWN_KEYS)
def api_keys(request):
    viewer = request.viewer
    organization = viewer.organization
    manage_all = viewer.may(Perm.MANAGE_ALL_KEYS)
    owners = (
        [
            (m.user_id, m.user.username)
            for m in account_selectors.membership_list(organization).filter(is_active=True)
            if account_selectors.may_manage_account(viewer.user, m.user)
        ]
        if manage_all
        else None
    )
    form = forms.ApiKeyCreateForm(organization=organization, owners=owners, initial={"owner": viewer.user.pk})
    created = None
    if request.method == "POST":
        form = forms.ApiKeyCreateForm(request.POST, organization=organization, owners=owners)
        if form.is_valid():
            data = form.cleaned_data
            owner_id = data.get("owner") or viewer.user.pk
            membership = account_selectors.membership_to_manage(organization, owner_id, actor=viewer.user)
            pool = token_selectors.pool_by_name(organization, data["pool"]) if data["pool"] else None
            result = attempt(
                request,
                lambda: account_services.api_key_create(
                    membership=membership, name=data["name"], expires_at=form.expires_at(), pool=pool,
                    **audit_of(request),
                ),
            )
            if result is not FAILED:
                api_key, raw_key = result
                created = {"key": api_key, "api_key": raw_key}
                form = forms.ApiKeyCreateForm(organization=organization, owners=owners, initial={"owner": viewer.user.pk})
    keys = account_selectors.api_key_list(organization, actor=viewer.user, user=None if manage_all else viewer.user)
    page = Paginator(keys, 100).get_page(request.GET.get("page"))
    response = render(
        request,
        "dashboard/api_keys.html",
        {"page": page, "form": form, "created": created, "manage_all": manage_all, "now": timezone.now()},
        status=400 if form.errors else 200,
    )
    return no_store(response) if created else response


@require_POST
@dashboard_view(Perm.MANAGE_OWN_KEYS)
def api_key_revoke(request, key_id: int):
    viewer = request.viewer
    owner = None if viewer.may(Perm.MANAGE_ALL_KEYS) else viewer.user
    api_key = account_selectors.api_key_get(viewer.organization, key_id, actor=viewer.user, user=owner)
    attempt(
        request,
        lambda: account_services.api_key_revoke(api_key=api_key, **audit_of(request)),
        success=f"Revoked {api_key}.",
    )
    return redirect("dashboard:api-keys")


# --- Usage ----------------------------------------------------------------------------------------


@dashboard_view()
def usage(request):
    viewer = request.viewer
    form = forms.UsageForm(request.GET or None)
    since, until = form.window() if form.is_bound else (None, None)
    group_by = form.group_by_value if form.is_bound else "day"
    everyone = viewer.may(Perm.VIEW_ALL_USAGE)
    report = token_selectors.usage_report(
        viewer.organization, since=since, until=until, group_by=group_by, user=None if everyone else viewer.user
    )
    if request.GET.get("format") == "csv":
        return _usage_csv(report)
    rows = report["rows"]
    return render(
        request,
        "dashboard/usage.html",
        {
            "form": form if form.is_bound else forms.UsageForm(initial={"group_by": "day"}),
            "report": report,
            "everyone": everyone,
            "error_types": ErrorType.ALL,
            "totals": {
                name: sum(row[name] for row in rows)
                for name in ("leases", "successes", "errors", "cancelled", "expired", "open")
            },
            "chart": {
                "labels": [row["name"] for row in rows],
                "leases": [row["leases"] for row in rows],
                "successes": [row["successes"] for row in rows],
                "errors": [row["errors"] for row in rows],
            },
            "csv_query": urlencode({**request.GET.dict(), "format": "csv"}),
        },
    )


def _usage_csv(report: dict) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    name = f"usage-{report['group_by']}-{report['since']:%Y%m%d%H}-{report['until']:%Y%m%d%H}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    writer = csv.writer(response)
    writer.writerow(
        [report["group_by"], "key", "leases", "successes", "errors", "cancelled", "expired", "open",
         *(f"errors_{kind}" for kind in ErrorType.ALL)]
    )
    for row in report["rows"]:
        writer.writerow(
            [_csv_safe(row["name"]), row["key"], row["leases"], row["successes"], row["errors"], row["cancelled"],
             row["expired"], row["open"], *(row["errors_by_type"][kind] for kind in ErrorType.ALL)]
        )
    return response


def _csv_safe(text: str) -> str:
    """Labels and usernames are typed by people: a leading = + - @ would run as a formula in a spreadsheet."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


# --- Audit log ------------------------------------------------------------------------------------

AUDIT_PAGE_SIZE = 50


@dashboard_view(Perm.VIEW_AUDIT)
def audit(request):
    form = forms.AuditFilterForm(request.GET or None)
    filters = form.cleaned_data if form.is_bound and form.is_valid() else {"actor": "", "action": ""}
    events = account_selectors.audit_event_list(request.viewer.organization, **filters)
    page = Paginator(events, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "dashboard/audit.html",
        {
            "form": form if form.is_bound else forms.AuditFilterForm(),
            "page": page,
            "filter_query": urlencode({k: v for k, v in filters.items() if v}),
        },
    )


# --- Chat -----------------------------------------------------------------------------------------


@dashboard_view(Perm.CHAT)
def chat(request):
    organization = request.viewer.organization
    return render(
        request,
        "dashboard/chat.html",
        {"pools": token_selectors.pool_list(organization).order_by("name"), "models": settings.PORTAL_MODELS},
    )


@dashboard_view(Perm.CHAT)
def chat_models(request):
    """The chat page's model list: PORTAL_MODELS, else what the upstream lists (cached by the relay)."""
    names = settings.PORTAL_MODELS or async_to_sync(relay.upstream_models)()
    return JsonResponse({"models": names})


# --- Organizations (platform superusers) ----------------------------------------------------------


@require_POST
@dashboard_view(SUPERUSER_PERMISSION)
def organization_enter(request, organization_id: int):
    """A superuser starts working in an organization: an admin membership there, then the switch."""
    organization = get_object_or_404(account_selectors.organization_list(), pk=organization_id)
    if not organization.is_active:
        messages.error(request, f"{organization.name} is deactivated.")
        return redirect("dashboard:organizations")
    membership = attempt(
        request,
        lambda: account_services.superuser_membership_ensure(organization=organization, **audit_of(request)),
    )
    if membership is FAILED:
        return redirect("dashboard:organizations")
    request.session[SESSION_ORGANIZATION_KEY] = organization.pk
    messages.success(request, f"Now working in {organization.name}.")
    return redirect("dashboard:overview")


@dashboard_view(SUPERUSER_PERMISSION)
def organizations(request):
    """Superusers: every organization, a form for a new one and one for an organization's first admin."""
    org_form = forms.OrganizationCreateForm(prefix="org")
    admin_form = forms.UserCreateForm(initial={"role": Role.ADMIN}, prefix="admin")
    created = None
    if request.method == "POST" and request.POST.get("form") == "organization":
        org_form = forms.OrganizationCreateForm(request.POST, prefix="org")
        if org_form.is_valid():
            data = org_form.cleaned_data
            organization = attempt(
                request,
                lambda: account_services.organization_create(name=data["name"], slug=data["slug"], **audit_of(request)),
            )
            if organization is not FAILED:
                messages.success(request, f"Created organization {organization.slug}; now create its first admin.")
                return redirect("dashboard:organizations")
    elif request.method == "POST" and request.POST.get("form") == "admin":
        admin_form = forms.UserCreateForm(request.POST, prefix="admin")
        target = account_selectors.organization_by_slug(request.POST.get("organization", ""))
        if target is None:
            messages.error(request, "Choose an organization.")
        elif admin_form.is_valid():
            data = admin_form.cleaned_data
            result = attempt(
                request,
                lambda: account_services.user_create(
                    organization=target, username=data["username"], email=data["email"], full_name=data["full_name"],
                    role=data["role"], password=data["password"] or None, **audit_of(request),
                ),
            )
            if result is not FAILED:
                created = {"username": result[0].user.username, "organization": target.slug, "api_key": result[1]}
                admin_form = forms.UserCreateForm(initial={"role": Role.ADMIN}, prefix="admin")
    response = render(
        request,
        "dashboard/organizations.html",
        {
            "organizations": account_selectors.organization_list(),
            "member_of": set(
                account_selectors.active_memberships_of(request.user).values_list("organization_id", flat=True)
            ),
            "org_form": org_form,
            "admin_form": admin_form,
            "created": created,
        },
        status=400 if org_form.errors or admin_form.errors else 200,
    )
    return no_store(response) if created else response
