"""What a generated project says to a person, in its README's language: the CUDA build
table's words, the message after generation and `make help`. One catalogue, English and
Korean side by side, so neither is scattered through the hooks and templates.

Korean is written in 해요체 (-요, and -세요 for what to do): plain and polite, for
students; one Korean term per concept (GLOSSARY). Commands, file names and product names
stay as they are.
"""

from __future__ import annotations

# The language each `readme_language` answer speaks to the person (en+ko: the README.md,
# English, is the one beside the commands).
SPOKEN = {"en": "en", "ko": "ko", "en+ko": "en"}

# One Korean word per concept, used everywhere the project speaks Korean: the word, and
# the variants it replaces (a test keeps them out of the Korean READMEs' prose). Requests
# end in -세요, never -십시오.
GLOSSARY = {
    "체크포인트": ("checkpoint",),
    "휠": ("wheel",),
    "워커": ("worker",),
    "컴퓨터": ("머신",),
    "해석하다 (a lock)": ("풀어내", "풀어낸", "풀어냅"),
    "자체 테스트": ("자가 점검",),
    "멈추다 (make stop; not 'docker pause')": ("일시 정지",),
    "-세요": ("십시오",),
}


# The README's "your nvidia-smi shows ... -> choose ..." table (rules.host.build_guide).
GUIDE = {
    "en": {
        "below": "below {driver}",
        "any": "any",
        "update": "none: update the driver",
        "between": "{low} to below {high}",
        "from": "{driver} or newer",
        "generations": "{first} to {last}",
        "capabilities": "{first} to {last}",
        "no_build": "none of this framework's builds",
        "ptx": " (PTX, compiled on first use)",
        "capability": "compute capability {capability}",
    },
    "ko": {
        "below": "{driver} 미만",
        "any": "모두",
        "update": "없음: 드라이버를 업데이트하세요",
        "between": "{low} 이상 {high} 미만",
        "from": "{driver} 이상",
        "generations": "{first}~{last}",
        "capabilities": "{first}~{last}",
        "no_build": "이 프레임워크의 빌드 중에는 없음",
        "ptx": " (PTX: 처음 쓸 때 컴파일)",
        "capability": "compute capability {capability}",
    },
}

# `make help`: each target's line, in the project Makefile (`target: ## ...`).
MAKE_HELP = {
    "en": {
        "help": "List the targets",
        "up": "Build if needed and start the environment in the background",
        "stop": "Pause the container (keeps it; `make start` resumes it)",
        "start": "Resume a stopped container; returns once Jupyter answers, like `make up`",
        "down": "Remove the container and its network; your files stay (they live on the host)",
        "clean-images": "Remove the container and this clone's images (6-7 GB each; your files stay); "
        "`make up` rebuilds",
        "shell": "A shell inside the container, as your user",
        "logs": "Follow Jupyter's log",
        "jupyter": "Print the Jupyter address, token included (over SSH: the ssh -L line too)",
        "gpu-test": "Which GPU and CUDA the framework uses, and the GPU/CPU speedup",
        "train": 'Train in the running container on every GPU (or the CPU); more options: ARGS="--epochs 20"',
        "lock": "Re-resolve the lock after changing the dependencies (then `make up`); "
        "UPGRADE=1 or UPGRADE_PACKAGE=name to upgrade",
        "k8s": "Print the multi-node training Job for Kubernetes (deploy/k8s/values.env): "
        "`make k8s | kubectl apply -f -`",
        "push": "Build the cluster image from the committed code and push it to REGISTRY (.env), "
        "tagged with the commit and your ids",
        "gpus": "The host's GPUs: who holds each (compose project, user), this clone's lease, the free ones",
        "doctor": "Check the host for what stops GPU containers (driver, toolkit, port, folders, line endings)",
        "clean-cache": "Delete cache/ (downloads, model weights), after asking: they are re-downloaded",
    },
    "ko": {
        "help": "target 목록을 보여 줘요",
        "up": "필요하면 빌드하고 환경을 백그라운드에서 시작해요",
        "stop": "컨테이너를 멈춰요(컨테이너는 남고, `make start`로 다시 시작해요)",
        "start": "멈춘 컨테이너를 다시 시작하고, `make up`처럼 Jupyter가 응답하면 돌아와요",
        "down": "컨테이너와 네트워크를 지워요. 파일은 호스트에 있으므로 그대로 남아요",
        "clean-images": "컨테이너와 이 clone의 이미지(각 6-7 GB)를 지워요. 파일은 남고, `make up`이 다시 빌드해요",
        "shell": "컨테이너 안의 셸을 여러분의 사용자로 열어요",
        "logs": "Jupyter 로그를 계속 보여 줘요",
        "jupyter": "토큰이 들어 있는 Jupyter 주소를 출력해요(SSH 세션이면 ssh -L 명령도)",
        "gpu-test": "프레임워크가 쓰는 GPU와 CUDA, 그리고 CPU 대비 GPU 속도를 보여 줘요",
        "train": '실행 중인 컨테이너에서 모든 GPU(없으면 CPU)로 학습해요. 옵션: ARGS="--epochs 20"',
        "lock": "의존성을 바꾼 뒤 lock을 다시 해석해요(그다음 `make up`). 업그레이드: UPGRADE=1 또는 "
        "UPGRADE_PACKAGE=이름",
        "k8s": "Kubernetes용 멀티 노드 학습 Job을 출력해요(deploy/k8s/values.env): `make k8s | kubectl apply -f -`",
        "push": "커밋된 코드로 클러스터 이미지를 빌드해서 REGISTRY(.env)에 push해요. 태그는 커밋과 여러분의 id예요",
        "gpus": "호스트의 GPU: 누가 어느 GPU를 쓰는지(compose 프로젝트, 사용자), 이 clone의 GPU, 빈 GPU",
        "doctor": "GPU 컨테이너를 막는 문제(드라이버, toolkit, 포트, 폴더, 줄 끝)를 호스트에서 점검해요",
        "clean-cache": "확인을 받은 뒤 cache/(다운로드, 모델 가중치)를 지워요. 다시 다운로드돼요",
    },
}

# The message after generation (hooks/post_gen_project.py), with its values by name.
NEXT_STEPS = {
    "en": """
Project written to {project}
{notes}
Next steps:
  cd {cd}
  make doctor       # checks Docker, the NVIDIA driver and toolkit, the port, the folders
{first_lock}  make up           # docker compose up --build -d (GPU host: NVIDIA Container Toolkit)
  make gpu-test     # which GPU and CUDA the framework uses, and the speedup
GPU or CPU: .env's COMPOSE_FILE (chosen from `docker info`: the NVIDIA runtime or not).

Jupyter: http://127.0.0.1:{port}/lab?token=<JUPYTER_TOKEN from .env>  (make jupyter prints it)
The NVIDIA driver on the host must be >= {min_driver} for CUDA {cuda} (nvidia-smi shows it; README: Choosing the CUDA build).
""",
    "ko": """
프로젝트를 {project}에 만들었어요
{notes}
다음 단계:
  cd {cd}
  make doctor       # Docker, NVIDIA 드라이버와 toolkit, 포트, 폴더를 점검해요
{first_lock}  make up           # `docker compose up --build -d` (GPU 호스트: NVIDIA Container Toolkit)
  make gpu-test     # 프레임워크가 쓰는 GPU와 CUDA, 그리고 속도 향상
GPU냐 CPU냐는 .env의 COMPOSE_FILE이 정해요(`docker info`에 NVIDIA 런타임이 있는지로 골라요).

Jupyter: http://127.0.0.1:{port}/lab?token=<.env의 JUPYTER_TOKEN> (make jupyter가 출력해요)
호스트의 NVIDIA 드라이버는 CUDA {cuda}에 >= {min_driver}이어야 해요(nvidia-smi가 보여 줘요. README: CUDA 빌드 고르기).
""",
}
NOTES = {
    "en": {
        "env_kept": "  (.env existed and was kept, token included)",
        "no_record": "  (the template had no git history: no .cruft.json; "
        "`cruft link <template git URL>` links the project for updates later)",
        "first_lock": "  make lock         # first: writes {lock}. CUDA {cuda} builds come from PyTorch's index\n"
        "                    # {index}, which generation does not reach: run it where it is reachable\n",
    },
    "ko": {
        "env_kept": "  (.env가 이미 있어서 토큰까지 그대로 두었어요)",
        "no_record": "  (템플릿에 git 기록이 없어서 .cruft.json이 없어요. "
        "나중에 업데이트를 받으려면 `cruft link <템플릿 git URL>`로 연결하세요)",
        "first_lock": "  make lock         # 먼저: {lock}을 써요. CUDA {cuda} 빌드는 PyTorch의 인덱스\n"
        "                    # <{index}>에서 받는데, 생성할 때는 접속하지 않아요. 접속되는 곳에서 실행하세요\n",
    },
}


def spoken(readme_language: str) -> str:
    """The language a project with this readme_language speaks to the person: en or ko."""
    return SPOKEN.get(readme_language, "en")


def make_help(readme_language: str, target: str) -> str:
    return MAKE_HELP[spoken(readme_language)][target]
