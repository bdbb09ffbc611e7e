"""What ``make demo`` needs on a fresh machine, pinned: three sample clips and the ICT Face Model Light.

Everything comes from public GitHub repositories at a full commit hash, so the bytes cannot move under
us. ``infra.fetch`` downloads one pinned file; ``infra.demo_assets`` turns these pins into the demo's
inputs (and converts the face model).

Clips (``CLIPS``): single files served by raw.githubusercontent.com at the commit. None of them is a
Git LFS pointer at its pinned commit (no ``.gitattributes`` there; the blobs are the MP4 files
themselves), so the raw URL serves the video and its sha256 is that of the blob. They are the same files
as ``../shared/data/videos/<name>.mp4`` (``../shared/data/README.md`` lists them). The licence is the
source repository's, which covers its code; the footage's own rights are not stated, so use the clips to
try and test the project locally and do not publish what is generated from them.

ICT Face Model Light (ICT-VGL/ICT-FaceKit, MIT): ``FaceXModel/`` of the repository at ``ICT_COMMIT``,
the same data as ``../shared/3dmm/ict_facekit_light.npz`` (packed from that commit). What is pinned,
and why: GitHub makes the zip archive of a commit on the fly and does not promise its bytes stay the
same, so the archive has no sha256 here. Instead every file the converter reads is pinned
(``ICT_FILES``: sha256 and size of the LICENSE, the neutral mesh, ``vertex_indices.json``, the 100
identity and the 53 expression OBJs; these are git blobs, stable for the commit), and the converted
model is pinned by ``ICT_MODEL_FINGERPRINT`` (``infra.demo_assets.model_fingerprint`` of the model, equal
to that of the shared packed file). The archive is the default source (one download, a third of the
size of the files it holds); where it fails or holds other bytes, each file is fetched from its raw URL,
which is checked by its own sha256.

Mirrors: ``base_url`` (or ``$HEAD2HEAD_ASSET_MIRROR``) replaces GitHub with a server laid out as
``{base}/{owner}/{repo}/{commit}/{path}`` for files and ``{base}/{owner}/{repo}/archive/{commit}.zip``
for archives (the tests serve that layout on loopback).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from infra.fetch import Asset

MIRROR_ENV = "HEAD2HEAD_ASSET_MIRROR"
GITHUB_RAW = "https://raw.githubusercontent.com"
GITHUB = "https://github.com"


@dataclass(frozen=True)
class RepoFile:
    """One file of a public repository at a full commit hash, with its pinned sha256 and size."""

    repo: str  # owner/name
    commit: str  # 40 hex digits
    path: str
    sha256: str
    size_bytes: int
    licence: str

    @property
    def source(self) -> str:
        return f"{self.repo} @ {self.commit[:7]} : {self.path}"


def mirror(base_url: str | None) -> str | None:
    """The mirror to use instead of GitHub: ``base_url``, else $HEAD2HEAD_ASSET_MIRROR, else None."""
    base = base_url or os.environ.get(MIRROR_ENV) or None
    return base.rstrip("/") if base else None


def file_url(file: RepoFile, base_url: str | None = None) -> str:
    """The raw URL of a pinned repository file (on GitHub or the mirror)."""
    return f"{mirror(base_url) or GITHUB_RAW}/{file.repo}/{file.commit}/{file.path}"


def archive_url(repo: str, commit: str, base_url: str | None = None) -> str:
    """The zip archive of a repository at a commit (GitHub redirects it to codeload.github.com)."""
    return f"{mirror(base_url) or GITHUB}/{repo}/archive/{commit}.zip"


# The demo's sample clips (DEMO_CLIPS), under the names they have in ../shared/data/videos.
CLIPS = {
    "liveportrait_d0": RepoFile(
        repo="KwaiVGI/LivePortrait",
        commit="1986663be3b6902605d32200c01f4bfd36cda83d",
        path="assets/examples/driving/d0.mp4",
        sha256="63f6f9962e1fdf6e6722172e7a18155204858d5d5ce3b1e0646c150360c33bed",
        size_bytes=2958395,
        licence="MIT",
    ),
    "aniportrait_pose_ref_video": RepoFile(
        repo="Zejun-Yang/AniPortrait",
        commit="7f6593fd971c95b65f603c15ef8ce2c3fc7f5404",
        path="configs/inference/head_pose_temp/pose_ref_video.mp4",
        sha256="947610a55bf6c6802bb158027b2b5b83df1084a4c5eb5419068844ed05177026",
        size_bytes=359008,
        licence="Apache-2.0",
    ),
    "sadtalker_WDA_KatieHill_000": RepoFile(
        repo="OpenTalker/SadTalker",
        commit="cd4c0465ae0b54a6f85af57f5c65fec9fe23e7f8",
        path="examples/ref_video/WDA_KatieHill_000.mp4",
        sha256="1fbb4cfd64eedc49b170c441714a9c4fd5e2c2f8a11592070ad89fbd257f2817",
        size_bytes=3548230,
        licence="Apache-2.0",
    ),
}
DEMO_CLIPS = tuple(CLIPS)
CLIP_FOLDER = "videos"


def clip_asset(name: str, base_url: str | None = None) -> Asset:
    """The pinned clip ``name`` (a key of CLIPS), cached as ``videos/<name>.mp4``."""
    if name not in CLIPS:
        raise ValueError(f"no pinned clip {name!r}; pinned: {', '.join(CLIPS)}")
    file = CLIPS[name]
    return Asset(
        name=f"{name}.mp4",
        filename=f"{CLIP_FOLDER}/{name}.mp4",
        urls=(file_url(file, base_url),),
        sha256=file.sha256,
        size_bytes=file.size_bytes,
        source=file.source,
        licence=f"{file.licence} (the repository's; the footage's own rights are not stated)",
    )


ICT_REPO = "ICT-VGL/ICT-FaceKit"
ICT_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"
ICT_LICENCE = "MIT"
ICT_ARCHIVE_APPROX_BYTES = 133_000_000  # the zip of the whole repository at ICT_COMMIT (figures included)
ICT_FOLDER = f"ict_facekit/{ICT_COMMIT[:7]}"  # under the cache: LICENSE and FaceXModel/ as in the repo
ICT_MODEL_FILENAME = "ict_facekit_light.npz"  # under the cache; model.face3d.loader looks for it there
# model_fingerprint of the converted model (= that of ../shared/3dmm/ict_facekit_light.npz).
ICT_MODEL_FINGERPRINT = "398fc02c4f102401ab9a107a4b62ac4c68360393eaf0e88299a674c8af60874c"

# sha256, size in bytes and path of every file at ICT_COMMIT that the conversion reads.
_ICT_TABLE = """
b20a78d8fc51657e14f3e00c8abb538d786ad00aa63210328c22565e583167e1 1096 LICENSE
eedbc2576d8e5ea57f55255b8f98263213a1efb5431d8bfceed1d7aef10271f9 2555599 FaceXModel/generic_neutral_mesh.obj
4f9b35306299980dd46bee4a6b79bb95dfae1953693b74b35a64f7febfd081a5 164052 FaceXModel/vertex_indices.json
918160cf82d541336b4c367cf93199c9827832bde02511b8fbdf9019d6f1a773 2559425 FaceXModel/identity000.obj
325115059deb6691cb2d55da07ae38bb08ce36e4ea146982f294a17513155b3b 2558978 FaceXModel/identity001.obj
e140e8305cd5232def3b94331d08450a13f312e525130fca8eeaa653231decc3 2559778 FaceXModel/identity002.obj
be3481a6bed8953a6d9dd7f811a04bc6d2ab94d1bd76ecfaa6d4cae87a450f9d 2559601 FaceXModel/identity003.obj
a2f411cc763e881cff250eb23c04fe8375b63a05a7dfa0492422e3b943e8a01d 2559142 FaceXModel/identity004.obj
274178eb33e33c555e6024535a51a62ee50050abd4f7014bbc7a4dc90a638c65 2559787 FaceXModel/identity005.obj
c9ae0426ab88b49065c852148f7bcff8cb09253fbee068b78955bd76c19a3e0f 2559268 FaceXModel/identity006.obj
ba38037151277b94e2b6b9b9800275d92d2c0aa8d61057b0718c9d7b90fffc44 2559156 FaceXModel/identity007.obj
b03543b783a15c1d28c5a384cd93657eda915227756780f682bc7370cd94ce1d 2559269 FaceXModel/identity008.obj
0cbb5ca5db9c61fa91df8d1c04b9b383b40d797032ca3f5a28a234d495e31b54 2558646 FaceXModel/identity009.obj
7bd1c31b76428cfb4bf29a2ac38bc2711d8c254aec25bba7ebd7a9b7dc81ebc7 2559280 FaceXModel/identity010.obj
68684bafa7e460ce7dd69c618a260143e6ecfa1254d0d49ec40202092a4b05f3 2559530 FaceXModel/identity011.obj
b899f17f8727b903b36f9a879ec95427c4df93d415956a211745bf44ed2be2dd 2559442 FaceXModel/identity012.obj
57a17eb9945a21c0a869dca4401964742c8d47e512d680fef94447aff826abc3 2559747 FaceXModel/identity013.obj
8a1a490f6e695c9116b820a95137823282415fb20bb0362725bedf0a1c2d8bd3 2559520 FaceXModel/identity014.obj
9f3da084848efabf5b898f72d3006db7442497a560185483358a8d4aefb8ac2d 2559388 FaceXModel/identity015.obj
184d17ffd35e7796777bf6008e0f904810e3781b46b37f37f9a550f1969c2525 2559604 FaceXModel/identity016.obj
5b55b7a104f561d5df44a9d0249f21bcf80890dd59666d777c2db9eccd128759 2559398 FaceXModel/identity017.obj
8ae8dd9cb5c7173f49643974420261f10f0437a7636531a50c2ae9a2badaf9a3 2559320 FaceXModel/identity018.obj
a22d531cddb3a0aaed12e6feddf45993f73545253d35642300dc4eca6438117a 2559500 FaceXModel/identity019.obj
3cabf614779ef2e625dfd4323a8db70a174e80e20aa083cd4cd3310503a66f1d 2558496 FaceXModel/identity020.obj
9ab18156977d76b6651868c68ddf5e3da529678606c9cc451cefe1bbc29cd4e5 2559513 FaceXModel/identity021.obj
6d6d1fb2c7af1d8bf14b65c2f60aa3312b3c6ad5c5315218559f3f9dd16f4f73 2559136 FaceXModel/identity022.obj
8b0e809b2b07c36eefaf5a4e6be9efed0ac0e3a8d1cc84130f112e12b188b457 2559425 FaceXModel/identity023.obj
23f6b0c1ffa4395aae606a199aa29be6b10800e46fd05c804b5a79fd87f718ff 2559557 FaceXModel/identity024.obj
93089be89ad88e7fe701dad51b07ecfa7eddfa81afaf13e27976bf97cc43a000 2558955 FaceXModel/identity025.obj
66c02f3e68e7e298b5e0938003df67a804bf0b153342acaa9ec19e63a7043896 2559520 FaceXModel/identity026.obj
d652ae8402706cd0eafa78b3745dea8435c496ca8585fe7300718e992b8fe690 2559452 FaceXModel/identity027.obj
9857adc057878d3d6f54a058e373a4ce471f77ccd49497008e2700c9d89e3d98 2558839 FaceXModel/identity028.obj
cf5c15dcf37e3d8973be8c86696894d1a8f902ba80cca28d3fda5cff87a70f09 2559532 FaceXModel/identity029.obj
ed70813c94cbbbf57b417016c760f2da44406da63d2b4bbbf8eb55711478c75c 2559442 FaceXModel/identity030.obj
c45f199b1e6dca582513863acb625ed1e2b61b5646098cc29d042db071e57ef2 2559664 FaceXModel/identity031.obj
b15d9d537ac8bf0408f321dc16fdd825fb1f52eb771e0d5201f75c02c94301c6 2559436 FaceXModel/identity032.obj
3dec9b7de7830d43eb7e7239469c07b0d02a7a61614565ae880182411a3931fb 2558789 FaceXModel/identity033.obj
bdef7f09c2bd200e026eeaceec519683033d6967ec831e0f32a1d1fcadd47ae1 2559442 FaceXModel/identity034.obj
f3ada8ae8bc42a604835d3752d6ac7d30d71652ea459560f9b8e528ae1e611df 2559549 FaceXModel/identity035.obj
e18ae8cfc06d376584f9b12fc2dd6535f3784c37128b66ae49ec0bdc53babfa6 2559401 FaceXModel/identity036.obj
e2a78ab5ea24dc03a2369e86086afca681373e7a33e84490a63749f54aae8f5f 2558790 FaceXModel/identity037.obj
37080e0e0aef74921514d4fe6e4d9054fd49b317ab328bfed9ecf4452c8d39ab 2559709 FaceXModel/identity038.obj
bc1e7dc17ea65e0acd7cec7a54c4fb16fbd1a15982c5eda853d4a409850da3b5 2559527 FaceXModel/identity039.obj
904a520b80658b1a58605109d2a1a0ec765e326afa63a6b57ccdb7b37178fdeb 2559255 FaceXModel/identity040.obj
b38ac35811e8ce84b517bbcc6769754004adae0207f25067c111f290a5f3283e 2559423 FaceXModel/identity041.obj
19f9dcb5fdc1a29da1f61a86c00b2e5d29b6649d13bfe88ec9d737424b464cda 2559565 FaceXModel/identity042.obj
65fbc36dfb2a3ebe9a77d2f895d0342e8537a9d8c61d202c3feef27d442c995c 2558955 FaceXModel/identity043.obj
d1f69e1a428a9d68a536e53b65fc62db14f70feaadf2dd1374949a2e728aa543 2559590 FaceXModel/identity044.obj
322357988af125bcf58141e4a90a3c1a475c0271013a2326e6ad610188415d2d 2559212 FaceXModel/identity045.obj
694d4f4d4f4700f7e2c97cdc26f343259298328434943664f33616c699d93bc7 2559286 FaceXModel/identity046.obj
1c7e6758628334115ceca708def3151e4e7d0a7641d67579d939c0d71b99aa92 2559570 FaceXModel/identity047.obj
a75dcc8e295d06ef9df565dc1acb4bf6e0829963d552c9138587b141c8514958 2559570 FaceXModel/identity048.obj
bd7238c27895a311f2b743535b3026d911a65039a858de89cc76f1922cabf21a 2559256 FaceXModel/identity049.obj
8549f4a4a884cce460605acc2e1b0b3273759f38ae79eeb5712e4c14fe9e959f 2559437 FaceXModel/identity050.obj
82dc080a3e3db45e916425305e9b4394046c4c4473f0bab7871720a69084a08e 2559068 FaceXModel/identity051.obj
fbab456a6d5e24f9c51a5fb184775af67a39b5795588aef32dc486b1199d1a78 2559265 FaceXModel/identity052.obj
3b43055487765ffbf6382bbcbe4715ce67e318fab131365fb300b9253426f174 2559092 FaceXModel/identity053.obj
f3ca0b1e431571cf42f66ccfd214f9a7da7d202ca3543c762ce71be3f1a09ac1 2559381 FaceXModel/identity054.obj
2541899c09da268e71a6f016b549e61ca24d2f4155d118b523b0556ec9102b86 2559534 FaceXModel/identity055.obj
f2efa2690a737fe4ea1e722dc0c2dfe0befbbf847a0feba37bc8c364ae1cf11c 2559431 FaceXModel/identity056.obj
054ce6afa96c165b738c83e3a06beb21b8dd6cb2df6a3c110627878b09ff006c 2559718 FaceXModel/identity057.obj
d6c74d031636be8474e1ec2476095df688618e805cc4a561f08dd771761f0620 2558868 FaceXModel/identity058.obj
9c1686ae731f54d4935a231e411fc1e42d118024bf9a66806586df4ffa8cf17e 2559547 FaceXModel/identity059.obj
636639e54c07651bd47d9f5835204c7416f04c06272620cfda388225ce4acf95 2559065 FaceXModel/identity060.obj
be397c552e36997db58de5201f7eafee4e2727b010e34e200e721ff99d42f91f 2559424 FaceXModel/identity061.obj
19fcb3c4fcf199fdea44a88c1785c5c319242e0a5b0440e7bf9633473dec888f 2559542 FaceXModel/identity062.obj
cea787322714ae932330808d377bf65d5f4da7346a4727767e5f6c0461a84a87 2559675 FaceXModel/identity063.obj
af88254d5c5787c63b9a69310c7cad1ed9bf9205411652e4aea785b7ea82b7ae 2559381 FaceXModel/identity064.obj
8f3ba630ce276a87c65c6302cecd9352a57e80a24240be2786464384e39babbe 2559045 FaceXModel/identity065.obj
010a5fc1bd8e5b3cc9631a6233fb7019edfb5390f8216bddda04b62cf7977046 2559575 FaceXModel/identity066.obj
e9e831aacd500e9d0761b51e4d32ed5b82c75219006e62d8b7f7f566ebe66927 2559139 FaceXModel/identity067.obj
d5a2214066683dc2140e277b8d6089814f1a80b6dbf8a7c6f9792c34d709fed7 2559758 FaceXModel/identity068.obj
419c78440217fc4b2c0f130718536f2c1ef4ffc4710e4fa7367a680bbf78ed19 2559329 FaceXModel/identity069.obj
d04d9686c1c69754d9c0e7bc09acf720b93e9496daf5502aacdae12442d88329 2559575 FaceXModel/identity070.obj
42a5429e4e780550067662273284aa42fb17fd8be47b1abf8b6039e50202e5e7 2558968 FaceXModel/identity071.obj
3f60cf1c31d8fa72f5fe6e1e4bf52862a18b851ab1538a4c925b6d38cf91a2ed 2559318 FaceXModel/identity072.obj
916087dc9a8e28f19170f826b8071f5b2baa3ec8ba468a42f0880e6ed4427ba5 2558876 FaceXModel/identity073.obj
c8120bc13eb35de329c2d0c206b5f86c4df4a07e1d36987a05e56cd8a5301316 2559297 FaceXModel/identity074.obj
fe7678ed6e903b01b52d977eed4dcfcfa2e9ac5b4ae7949cc3a40249cebe3e0e 2559369 FaceXModel/identity075.obj
f059cbad69acbd5d21f149c362df502165ac2edc234633c9f951d7ee16c18e44 2558888 FaceXModel/identity076.obj
7d82c57e39e1f2e999e78f19a07ff7a407bdc1b22505b9519c26b54ec0d71bfb 2559419 FaceXModel/identity077.obj
6e18e072ff5718950c215e13434599e21d89cc4ad419aeba9a8988682d051d08 2559494 FaceXModel/identity078.obj
c78769be8238c1e6efa21c84a6149953b10ccc00be67028edf9c345ffde4c53d 2559455 FaceXModel/identity079.obj
c24276693121f87bc47ffd081e4ea624136b7a9ee6186f8a1d4dd79c2c7fb25d 2559290 FaceXModel/identity080.obj
ac84f6861264e7c8bbcd86a1bbc86e5d3ce1d9cdd98adff8ffef6a13e33986fb 2559583 FaceXModel/identity081.obj
33d75dd5d86812bfa22f2360383f25a6ecac69be32ef07a6dedbf28c0433c98e 2559386 FaceXModel/identity082.obj
6bbee0dfed711aa2336ae7614d821752d02e338da45d6f726f2cef1810699e87 2559207 FaceXModel/identity083.obj
7db8e5df79cf7442c232a9184f04feebfb3618e48fcd2c348907a04e7b4485ad 2559598 FaceXModel/identity084.obj
154f0743e1522e1c7f2b9b19cfb31dbc6fc0eadc46188c7097c2045864c81433 2559060 FaceXModel/identity085.obj
c1b7da51297b6cf036cc30585bcc12db6ad00783823657cc7bc7472d98adbf68 2559467 FaceXModel/identity086.obj
d5f123616f1628cfb1cf52faae2a8982d1533c8bf99282e219b682f27260382f 2559410 FaceXModel/identity087.obj
82bb4bdc9c4870ee984327a57cc8b62dce704093dbab3e4270afb8112aaef116 2559477 FaceXModel/identity088.obj
2d462a9844362cbf66b63794555b7aa63353daeec57960f2503540d7b3983e62 2559026 FaceXModel/identity089.obj
05baa39fa4ed9378680b2ad9636facf0f18045bfc1fb2c437e85b9035fd2d3ef 2559361 FaceXModel/identity090.obj
562e6c2e0f5fef6e8bba81c1049adef1d03cf01c55123029e3edcba861d91121 2559325 FaceXModel/identity091.obj
a7ee20c22ba7be28de2eef5878a43decc65b9c215d4087188b690a87201e9103 2559442 FaceXModel/identity092.obj
f7372bd3d4d7b1a107cb2fcc253b10deab0659d39ee1a883ac6352da5ee740ab 2559308 FaceXModel/identity093.obj
ea34d4dcf1934141d6a24fe5fc97c97621e6c2fd36c608b7031d074ab866568b 2559483 FaceXModel/identity094.obj
1ebee650c4db2b4b84fb0f677a1e3f72a565081524813f1c664d8c76367fa4c8 2558959 FaceXModel/identity095.obj
1192407c0209709e6c8edd8dfd6e6d663d471f95a379f83ffc4bae47983d4bfa 2559461 FaceXModel/identity096.obj
a3ba3be2427e8882eacaf658eb6e5781bcfa551bd743ffc753481d3b8bd58845 2559346 FaceXModel/identity097.obj
b8a13585231b382c6d8bb5dd96cd4de5fa5542a8981d4cd63fe39f1c251a5b90 2559357 FaceXModel/identity098.obj
6294bbed0197a06d091d1ad9f586c5f8d90fce4f580350a509749ae688472912 2559425 FaceXModel/identity099.obj
d1dcd14fc085a9e258dec62a4bfe4a31d592cce5d8918a3892c20f480653f4c1 2557185 FaceXModel/browDown_L.obj
66a2c72ab64999af168795f27182d011f52b90958c402d719d3ec8ff7d1c8939 2557221 FaceXModel/browDown_R.obj
81fb1625794ea36fb13303234ce06cef798acfdbc489077e22ae195a705bc92e 2557407 FaceXModel/browInnerUp_L.obj
5e66b46cdad89fd1237273db2b885511688cf37636cedfdde432a4844c9109e7 2557536 FaceXModel/browInnerUp_R.obj
022d5342687e51351f4cad6dd1abd42c3bb1b752d0b235bdc7fc588ab0d79c90 2557263 FaceXModel/browOuterUp_L.obj
1e4722060538b274ed49ed872525d770b5bfd9262b7bce1b6310f49356f5b531 2557349 FaceXModel/browOuterUp_R.obj
f53fd2bdeb8e26d0db8a684ab9c095c6bb113b74575dec329facae2799ff18c6 2557393 FaceXModel/cheekPuff_L.obj
cd5b5d0f3a653a1fa31abeb65daf8fd6ffdf83a4d1bf22333a469b13b96fa801 2557558 FaceXModel/cheekPuff_R.obj
572fe87f2e0cdd0a7ff868b9173d0ff08ee2bc73bf94c17b603f6e5d5b8fbe26 2557264 FaceXModel/cheekSquint_L.obj
a9afa0aac432159e89eb54dbbb3139864b8cc1c4208c3c0e9c420d0d8050b99a 2557282 FaceXModel/cheekSquint_R.obj
f5ed1c3072a400083b7d4f7f5cb3d73882b7ebb95c3232f957394db8cf7fe19e 2558269 FaceXModel/eyeBlink_L.obj
d281ad0af03e89a70abf1214d52c295b3a279c9b35f6795938c4487f467ca003 2558238 FaceXModel/eyeBlink_R.obj
e7da4fa6509af5da25fab1a34255889a68f06b90fd37f65c6c05e5bdbbe2f755 2556857 FaceXModel/eyeLookDown_L.obj
ac466de6decf619701f3ee7f80fa7371020d325084b41ad7f4b2840e232abf83 2557046 FaceXModel/eyeLookDown_R.obj
1e037332bc059a95d05fcb24728ae297a2d4d268ff0cf623d3647d2a4f86bd31 2556734 FaceXModel/eyeLookIn_L.obj
3d64db0e51ad28e76eff56217da401c5ee563b5e76a207cb192046465bbab14a 2556912 FaceXModel/eyeLookIn_R.obj
235739695136c40b7a2c3239a100ff75b7bfc271ae195aeb55330848c999c9c8 2556671 FaceXModel/eyeLookOut_L.obj
ac10dfa83ccaca7fd76fe96d74f8cbc80582e2ef914d1092827b54f88125650e 2556899 FaceXModel/eyeLookOut_R.obj
72ed342df43489a76e9d468df3ca7f48328f41c924af0c03d88fde9905d82848 2556663 FaceXModel/eyeLookUp_L.obj
d8ade1cab9f7f0c4ef6ec007f33e9c9df90a58c666b9aac5a784192cd389e899 2556887 FaceXModel/eyeLookUp_R.obj
ecb8244f083cf55fa9f0277427b8213315176a624d9ac3a09b533c7fbc68917e 2557184 FaceXModel/eyeSquint_L.obj
0dffbbc651b9cdbc346ead32ba102051200c72ed8a93e7b33f07149e18390b8a 2557220 FaceXModel/eyeSquint_R.obj
015a995b0f09783683f5575af7e4c939cd758d194d7ca2e8ffacb9ddbabf0078 2556638 FaceXModel/eyeWide_L.obj
4b8207f6013a751ae35affba62cc70bd6b53e046bbe48e8fd5a150450a7789ed 2556824 FaceXModel/eyeWide_R.obj
a0126b2926b69540f478e4c48f05e370868050e6c33718e53c2f17e190a3b239 2558382 FaceXModel/jawForward.obj
5af90cd941660fb0116948866414e4321035de754b7ebec787f8144445d2d9e9 2557576 FaceXModel/jawLeft.obj
8d84355e10f48b05550980cee385bcd426f4797090da76a20de0535bb2f99f4a 2558596 FaceXModel/jawOpen.obj
d719335ad69a8f18797501d4728910c7a467aecbbae260923192b1bf242eec97 2558778 FaceXModel/jawRight.obj
4a44b94c269407cf1171483d87d99d2cbdea9c66242aabf2ad0f57cb785aa193 2558396 FaceXModel/mouthClose.obj
189f6e01adbf1e13147fe4d505d1f3006e5ce4590ae150064b810274093d29b0 2557203 FaceXModel/mouthDimple_L.obj
4cf674b98d6d34a16fab462fbd9ecb2cb5e39ccaf3f50459b9ac7d59fbd6a215 2557190 FaceXModel/mouthDimple_R.obj
1bfd720ad024e5805ac8472df170c2c96c09e817e02b66f916057d6e2d31ee9b 2557212 FaceXModel/mouthFrown_L.obj
ae3da92fa1dc70010c6bec810338d740287c71b8730694c97876cab5af241f74 2557343 FaceXModel/mouthFrown_R.obj
d4f1dba04c1af5fc37452c88cc54a72f1133296c26d9abe0f8adb74dc5c2577f 2558785 FaceXModel/mouthFunnel.obj
01fb69aa8ac07c5762719c9bb2eec5372652c9f1e73509a63d01e7e60e28b885 2557806 FaceXModel/mouthLeft.obj
8847660d51e2a72f2bce6ce9add7d58abab1cef967420db83056891291c0b2de 2557198 FaceXModel/mouthLowerDown_L.obj
b5143ed50d41c91d80ddc8b565f6274eaf514509ec6f895797db34ca92a85b68 2557217 FaceXModel/mouthLowerDown_R.obj
de2bdaf2fa7199294ff7a281cd8f6647bf5ca9a6f84588bd7f7779fff4c61396 2557371 FaceXModel/mouthPress_L.obj
ca8d9973b3231e51b8b76d3e7af7f7f3432959b7c37148fc25e7c643252847b6 2557400 FaceXModel/mouthPress_R.obj
9929c31025667683809f70df7dce612f72e3acfc7f9e8acb939f6636509dbc5c 2558649 FaceXModel/mouthPucker.obj
e3faaf5ed51715e77122d76e8187d5ba83ea9f54e15e29c52e64f26c52e66bda 2559046 FaceXModel/mouthRight.obj
1f577e1129eef4f9e9dc26aa739c6d0f15b27253dee89af3428db6816666e910 2558326 FaceXModel/mouthRollLower.obj
a69ec7407adfd6a5f4c818179bb4604d9e506c07671976f75ac33ef8f54a1bb0 2558554 FaceXModel/mouthRollUpper.obj
1eedd7831b0408bdcbc9aefe23b11803c54f81da5fc9be1fe81fc7a5117c0b88 2558293 FaceXModel/mouthShrugLower.obj
2bd3e3f1568366f2fd84717f0f63aee9f56eed4c303fc4f234aadd81d430032c 2645083 FaceXModel/mouthShrugUpper.obj
91794e73cef330f1c7d1f4541723544708536b39d5dd6ed35fd8f83f676b7af4 2556954 FaceXModel/mouthSmile_L.obj
3fb3de3da9f8358edbb933a65ce6e44c25a2501f30dcb240daea725b68adac84 2556994 FaceXModel/mouthSmile_R.obj
9187105730bad43023c63e2a91c979091b9289dd8fc1b587885412b8f7a3d2b7 2644789 FaceXModel/mouthStretch_L.obj
d985452085a19d6b3da397ca2cd2f938d8e08761d2e684e87640f3639bdf5f6d 2556437 FaceXModel/mouthStretch_R.obj
d49483aca6cbbb7a559edf4865aec62970560ddf3a0d34e5b208488bff59f722 2645019 FaceXModel/mouthUpperUp_L.obj
299e3da0f36ca80c0c74e51900b67bfe6bb5b0101aaf46ce30075064c26a7f02 2556207 FaceXModel/mouthUpperUp_R.obj
47c5d66ddc1ba146480f0e43b1084f439e0e7d2af31bcec3e6a3bffc420ffa4d 2557159 FaceXModel/noseSneer_L.obj
c384c41331124b9cd4b99c1bbe8aef56318cae2b8db6ff0f573a7347ebbe8caa 2557058 FaceXModel/noseSneer_R.obj
"""
ICT_FILES = tuple(
    RepoFile(ICT_REPO, ICT_COMMIT, path, sha256, int(size), ICT_LICENCE)
    for sha256, size, path in (line.split() for line in _ICT_TABLE.strip().splitlines())
)


def ict_archive_asset(base_url: str | None = None) -> Asset:
    """The zip of ICT-FaceKit at ICT_COMMIT; not pinned by sha256 (see the module docstring): its
    members are checked against ICT_FILES when unpacked."""
    return Asset(
        name=f"ICT-FaceKit-{ICT_COMMIT[:7]}.zip",
        filename=f"{ICT_FOLDER}.zip",
        urls=(archive_url(ICT_REPO, ICT_COMMIT, base_url),),
        sha256=None,
        source=f"{ICT_REPO} @ {ICT_COMMIT}",
        licence=ICT_LICENCE,
    )


def ict_file_asset(file: RepoFile, base_url: str | None = None) -> Asset:
    """One pinned file of ICT-FaceKit, cached where unpacking the archive puts it."""
    return Asset(
        name=f"ICT-FaceKit {file.path}",
        filename=f"{ICT_FOLDER}/{file.path}",
        urls=(file_url(file, base_url),),
        sha256=file.sha256,
        size_bytes=file.size_bytes,
        source=file.source,
        licence=file.licence,
    )
